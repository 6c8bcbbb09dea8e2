"""Deployment rules: which signatures can be batched, and the status of a deployment from its replicas."""

from __future__ import annotations

import pytest

from core.deployments import batching_problems, deployment_status


def signature(*shapes: list[int] | None) -> dict:
    return {"inputs": [{"name": f"in{i}", "datatype": "FP32", "shape": s} for i, s in enumerate(shapes)]}


@pytest.mark.parametrize(
    ("shapes", "max_batch_size", "problem"),
    [
        ([[-1, 4]], 32, None),
        ([[-1, -1], [-1]], 8, None),
        ([None], 8, None),
        ([[1, 4]], 1, None),
        ([[1, 4]], 2, "input 'in0' has a fixed first dimension of 1"),
        ([[-1, 4], [5, 4]], 1, "input 'in1' has a fixed first dimension of 5"),
        ([[]], 1, "input 'in0' is a scalar"),
    ],
)
def test_batching_needs_a_free_first_dimension(shapes, max_batch_size, problem):
    problems = batching_problems(signature(*shapes), max_batch_size)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem)


@pytest.mark.parametrize(
    ("statuses", "status"),
    [
        ([], "pending"),
        (["loading"], "pending"),
        (["failed", "loading"], "pending"),
        (["failed", "ready"], "ready"),
        (["draining", "ready"], "ready"),
        (["failed", "failed"], "failed"),
    ],
)
def test_a_deployment_is_ready_once_one_server_serves_it(statuses, status):
    assert deployment_status(statuses) == status
