"""Alembic environment and versions: the only place the schema changes.

``maas db upgrade`` / ``maas db downgrade`` drive it through ``migrations.runner``.
"""
