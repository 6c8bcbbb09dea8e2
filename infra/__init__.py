"""Infrastructure: ``maas up``, the whole platform on one machine (``infra.local_stack``): the
embedded PostgreSQL, Redis and S3 servers it starts (``infra.embedded``), then the API, a Celery
worker and a model server as supervised child processes."""
