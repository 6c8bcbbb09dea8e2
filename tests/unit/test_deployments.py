"""Deployment rules: which signatures can be batched, and the status of a deployment from its replicas."""

from __future__ import annotations

import pytest

from core.deployments import batching_problems, deployment_status, load_failure


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


@pytest.mark.parametrize(
    ("replicas", "placement_error", "reason"),
    [
        ([], None, None),  # at zero: it may still load
        ([("failed", "sha256 mismatch"), ("loading", None)], None, None),  # another server still tries
        ([("failed", "sha256 mismatch"), ("failed", None)], None, "sha256 mismatch"),
        ([("failed", None)], None, "every load of it failed"),
        ([], "needs 60.0 MiB", "needs 60.0 MiB"),
        ([("failed", "sha256 mismatch")], "needs 60.0 MiB", "needs 60.0 MiB"),
        ([("ready", None)], "needs 60.0 MiB", None),  # it serves: nothing to refuse
    ],
)
def test_a_deployment_that_cannot_be_served_says_why(replicas, placement_error, reason):
    assert load_failure(replicas, placement_error) == reason
