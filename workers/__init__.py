"""Celery workers: the app, one module per queue, process supervision, cancellation, recovery.

No training or compression math lives here; workers call ``training/`` and
``compression/`` and report to Postgres.
"""
