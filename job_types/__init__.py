"""The job types: one module each (its spec, queue, pre-create checks and worker handler, as one
``JobType``), listed in ``job_types.registry``. Under ``api`` and ``workers``, over ``core``;
free of Celery and HTTP, so both sides import the same definition."""
