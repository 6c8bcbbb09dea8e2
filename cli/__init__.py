"""The ``maas`` command line: run the platform, migrate the database, manage tenants and keys."""
