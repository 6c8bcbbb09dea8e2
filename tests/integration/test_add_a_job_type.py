"""The README's "Add a job type" walk-through is true: its module is ``tests/support/dataset_stats.py``
as it is, and that module alone (named in MAAS_JOB_TYPE_MODULES) gives the API a validated,
checked job type that an inference worker runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support.api import create_job, run_job, upload
from tests.support.datasets import digits_bytes, npz

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_shows_the_module_the_tests_run() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Add a job type") :]
    shown = section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]
    module = (REPO / "tests/support/dataset_stats.py").read_text()
    assert shown == module[module.index("from __future__") :]


async def test_the_new_job_type_runs_through_the_api_and_a_worker(api, tenant, inference_worker) -> None:
    data, x, _ = digits_bytes()
    file_id = await upload(api, tenant, data, "digits.npz")
    job = await run_job(api, tenant, {"type": "dataset_stats", "spec": {"file_id": file_id}}, timeout_s=60)
    assert job["status"] == "succeeded", job
    assert job["result"]["rows"] == len(x) and job["metrics"]["rows"] == len(x)
    assert np.allclose(job["result"]["mean"], x.mean(axis=0), atol=1e-4)
    assert np.allclose(job["result"]["std"], x.std(axis=0), atol=1e-4)


async def test_its_check_refuses_a_file_without_x_before_anything_is_created(api, tenant) -> None:
    file_id = await upload(api, tenant, npz(features=np.zeros((4, 2), np.float32)), "no-x.npz")
    response = await create_job(api, tenant, {"type": "dataset_stats", "spec": {"file_id": file_id}})
    assert response.status == 422
    assert (await response.json())["errors"] == [{"pointer": "/spec/file_id", "detail": "the file has no array X"}]
    response = await create_job(api, tenant, {"type": "dataset_stats", "spec": {"file_id": "not-a-file"}})
    assert response.status == 422 and (await response.json())["errors"][0]["pointer"] == "/spec/file_id"
    listed = await api.get("/v1/jobs", headers=tenant.headers)
    assert (await listed.json())["data"] == []
