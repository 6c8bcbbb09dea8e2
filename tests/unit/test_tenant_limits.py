"""The pure rules of tenant limits: quota names and their resolution, which routes are rate limited, lease
sizes, what a grant tells a client (RateLimit-Reset, Retry-After) and the headers of a decision."""

from __future__ import annotations

import pytest

from api.rate_limits import CREATES, INFERENCE, Decision, rate_class
from core import quotas
from core.rate_buckets import Grant, lease_size
from core.settings import Settings


def test_quota_names_are_the_fixed_ones_or_a_per_type_family():
    assert quotas.split("deployments") == ("deployments", None)
    assert quotas.split("running_jobs_batch_inference") == ("running_jobs", "batch_inference")
    assert quotas.split(quotas.queued_jobs("training")) == ("queued_jobs", "training")
    for bad in ("gpus", "running_jobs_", "queued_jobs_" + "x" * 60):
        with pytest.raises(quotas.UnknownQuota):
            quotas.split(bad)


def test_a_tenant_row_wins_then_the_running_jobs_row_then_the_setting():
    settings = Settings(quota_running_jobs=4, quota_queued_jobs=50)
    assert quotas.resolve("running_jobs_training", {}, settings) == 4
    assert quotas.resolve("running_jobs_training", {"running_jobs": 2}, settings) == 2
    assert quotas.resolve("running_jobs_training", {"running_jobs": 2, "running_jobs_training": 9}, settings) == 9
    assert quotas.resolve("queued_jobs_training", {}, settings) is None  # only the total applies
    assert quotas.resolve("queued_jobs", {}, settings) == 50


def test_inference_and_creates_are_limited_reads_and_cancels_are_not():
    assert rate_class("POST", "/v2/models/{name}/infer") == INFERENCE
    assert rate_class("POST", "/v2/models/{name}/versions/{version}/infer") == INFERENCE
    assert rate_class("POST", "/v1/predictions") == INFERENCE
    assert rate_class("POST", "/v1/jobs") == CREATES
    assert rate_class("PUT", "/v1/models/{name}/deployment") == CREATES
    assert rate_class("POST", "/v1/jobs/{id}/cancel") is None
    assert rate_class("POST", "/v1/webhooks/secret/rotate") is None
    assert rate_class("GET", "/v1/jobs") is None
    assert rate_class("DELETE", "/v1/files/{id}") is None


def test_a_lease_is_a_tenth_of_a_second_of_refill_at_least_one_token_at_most_the_bucket():
    assert lease_size(60_000, 0.1) == 100
    assert lease_size(10, 0.1) == 1
    assert lease_size(3, 60.0) == 3


def test_a_grant_says_when_the_bucket_is_full_and_when_the_next_token_comes():
    grant = Grant(tokens=0, left=0.25, capacity=60, rate_per_s=1.0)
    assert grant.reset_s() == pytest.approx(59.75)
    assert grant.retry_after_s() == pytest.approx(0.75)
    assert Grant(tokens=5, left=7.0, capacity=60, rate_per_s=1.0).retry_after_s() == 0.0


def test_a_decision_renders_the_draft_headers_and_a_refusal_adds_retry_after():
    allowed = Decision(True, limit=600, remaining=598, reset_s=0.2)
    assert allowed.headers() == {"RateLimit-Limit": "600", "RateLimit-Remaining": "598", "RateLimit-Reset": "1"}
    refused = Decision(False, limit=10, remaining=0, reset_s=59.2, retry_after_s=5.1)
    assert refused.headers()["Retry-After"] == "6"
    problem = refused.problem("creates_per_min")
    assert problem.status == 429
    assert problem.extra == {"quota": "creates_per_min", "limit": 10, "used": 10}
