"""A job type module that must be refused at startup: its one type has no handler."""

from __future__ import annotations

from pydantic import BaseModel

from job_types.base import JobType


class Nothing(BaseModel):
    pass


QUEUES = ("test-broken",)
JOB_TYPES = (JobType(name="test.no_handler", spec=Nothing, queue="test-broken", handler=None),)
