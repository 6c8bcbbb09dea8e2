"""``maas admin tenants quotas | set-quota`` and ``maas admin usage`` as an operator runs them."""

from __future__ import annotations

from datetime import UTC, datetime

from core import quotas, usage
from tests.integration.test_cli_admin import maas


def test_a_quota_is_set_shown_and_reset_from_the_cli(settings, db, tenant, api):
    done = maas(settings, "admin", "tenants", "set-quota", tenant.id, "queued_jobs", "7")
    assert done.returncode == 0, done.stderr
    assert "queued_jobs = 7" in done.stdout
    with db() as session:
        assert quotas.effective_quota(session, tenant.id, "queued_jobs", settings) == 7

    shown = maas(settings, "admin", "tenants", "quotas", "--tenant", tenant.id)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[1]: line.split()[2:] for line in shown.stdout.splitlines() if line.startswith(tenant.id)}
    assert rows["queued_jobs"] == ["7", "tenant", "0"]  # value, where it comes from, the use now
    assert rows["deployments"][:2] == [str(settings.quota_deployments), "default"]
    assert set(quotas.QUOTAS) <= set(rows)

    per_type = maas(settings, "admin", "tenants", "set-quota", tenant.id, "running_jobs_training", "1")
    assert per_type.returncode == 0, per_type.stderr
    reset = maas(settings, "admin", "tenants", "set-quota", tenant.id, "queued_jobs", "default")
    assert "(default)" in reset.stdout
    with db() as session:
        assert quotas.effective_quota(session, tenant.id, "queued_jobs", settings) == settings.quota_queued_jobs
        assert quotas.effective_quota(session, tenant.id, quotas.running_jobs("training"), settings) == 1

    unknown = maas(settings, "admin", "tenants", "set-quota", tenant.id, "gpus", "1")
    assert unknown.returncode == 2 and "unknown quota 'gpus'" in unknown.stderr


def test_every_tenants_usage_from_the_cli(settings, db, tenant, other_tenant):
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with db() as session:
        usage.record(session, tenant.id, usage.JOB_SECONDS, 90.0, subject="training", at=at)
        usage.record(session, other_tenant.id, usage.JOB_SECONDS, 30.0, subject="compression", at=at)
        session.commit()
    shown = maas(
        settings, "admin", "usage", "--from", "2026-03-01T00:00:00+00:00", "--to", "2026-03-02T00:00:00+00:00",
        "--group-by", "job_type",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[1:]}
    assert lines[tenant.id][1] == "training" and float(lines[tenant.id][5]) == 90
    assert lines[other_tenant.id][1] == "compression" and float(lines[other_tenant.id][5]) == 30
