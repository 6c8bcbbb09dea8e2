"""The job type registry and its startup check: every type has a handler and a queue that
workers consume, names are unique, and extra modules come in through MAAS_JOB_TYPE_MODULES.
A broken type stops the API and the worker at startup with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from api.app import create_app
from core.broker import QUEUES
from core.settings import Settings
from job_types.base import JobContext, JobType
from job_types.registry import BUILT_IN, JobTypeError, build, load_job_types

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"database_url": "postgresql://nowhere/db", "broker_url": "redis://nowhere", "s3_endpoint_url": "http://x"}


class Spec(BaseModel):
    pass


def handle(ctx: JobContext) -> dict:
    return {}


def test_the_product_types_are_built_in_each_on_a_product_queue() -> None:
    job_types = load_job_types(Settings())
    assert job_types.names() == ["batch_inference", "compression", "training"]
    assert {t.queue for t in job_types} <= set(QUEUES)
    assert all(t.handler is not None and t.check is not None for t in BUILT_IN)


def test_a_type_without_a_handler_is_refused_by_name() -> None:
    with pytest.raises(JobTypeError, match="'orphan' has no handler"):
        build([JobType(name="orphan", spec=Spec, queue="training", handler=None)], QUEUES)


def test_a_type_on_a_queue_no_worker_consumes_is_refused() -> None:
    with pytest.raises(JobTypeError, match="names queue 'trainign', which no worker consumes"):
        build([JobType(name="typo", spec=Spec, queue="trainign", handler=handle)], QUEUES)


def test_two_types_of_one_name_are_refused() -> None:
    twice = [JobType(name="same", spec=Spec, queue="training", handler=handle)] * 2
    with pytest.raises(JobTypeError, match="two job types are named 'same'"):
        build(twice, QUEUES)


def test_a_spec_must_be_a_pydantic_model() -> None:
    with pytest.raises(JobTypeError, match="spec must be a pydantic model"):
        build([JobType(name="loose", spec=dict, queue="training", handler=handle)], QUEUES)  # type: ignore[arg-type]


def test_modules_named_in_the_settings_add_their_types_and_queues() -> None:
    job_types = load_job_types(Settings(job_type_modules="tests.support.job_types"))
    assert "test.sleep" in job_types.names() and "training" in job_types.names()
    assert job_types.queues[: len(QUEUES)] == QUEUES and "test-shared" in job_types.queues


def test_a_module_that_cannot_be_imported_or_exports_no_types_is_refused() -> None:
    with pytest.raises(JobTypeError, match=r"'no\.such\.module', which cannot be imported"):
        load_job_types(Settings(job_type_modules="no.such.module"))
    with pytest.raises(JobTypeError, match="exports no JOB_TYPES"):
        load_job_types(Settings(job_type_modules="tests.support.onnx_models"))


def test_the_api_refuses_to_start_with_a_type_without_a_handler() -> None:
    settings = Settings(**SERVICES, job_type_modules="tests.support.broken_job_types")
    with pytest.raises(JobTypeError, match=r"'test\.no_handler' has no handler"):
        create_app(settings)


def test_a_worker_refuses_to_start_with_a_type_without_a_handler() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env |= {"MAAS_BROKER_URL": "redis://127.0.0.1:1/0", "MAAS_JOB_TYPE_MODULES": "tests.support.broken_job_types"}
    env |= {"MAAS_DATA_DIR": str(REPO / ".maas-test-none"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "workers"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "job type 'test.no_handler' has no handler" in done.stderr
