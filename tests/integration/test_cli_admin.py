"""``maas db`` and ``maas admin`` as a person runs them, against the API they manage."""

from __future__ import annotations

import re
import subprocess
import sys

from alembic.script import ScriptDirectory

from core.settings import to_env
from migrations import runner
from tests.support.processes import REPO, inherited_env


def maas(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env={**inherited_env(), **to_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_tenant_and_key_lifecycle_from_the_cli(settings, api):
    name = f"cli-{re.sub(r'[^a-z0-9]', '', str(id(api)))}"
    created = maas(settings, "admin", "tenants", "create", name)
    assert created.returncode == 0, created.stderr
    assert name in maas(settings, "admin", "tenants", "list").stdout

    made = maas(settings, "admin", "keys", "create", "--tenant", name, "--name", "laptop")
    assert made.returncode == 0, made.stderr
    key = re.search(r"^key:\s+(\S+)$", made.stdout, re.M).group(1)
    prefix = re.search(r"^prefix:\s+(\S+)$", made.stdout, re.M).group(1)
    assert "shown only now" in made.stderr

    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/files", headers=headers)).status == 200
    listed = maas(settings, "admin", "keys", "list", "--tenant", name).stdout
    assert prefix in listed and key not in listed and "active" in listed

    revoked = maas(settings, "admin", "keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    assert (await api.get("/v1/files", headers=headers)).status == 401
    assert "revoked" in maas(settings, "admin", "keys", "list", "--tenant", name).stdout


def test_a_tenants_fair_share_weight_is_set_from_the_cli(settings, db, tenant):
    from core.models import Tenant

    done = maas(settings, "admin", "tenants", "set-weight", tenant.id, "3")
    assert done.returncode == 0, done.stderr
    assert "fair-share weight 3" in done.stdout
    with db() as session:
        assert session.get_one(Tenant, tenant.id).fair_share_weight == 3
    listed = maas(settings, "admin", "tenants", "list").stdout.splitlines()
    assert next(line for line in listed if line.startswith(tenant.id)).endswith("weight 3")
    refused = maas(settings, "admin", "tenants", "set-weight", tenant.id, "0")
    assert refused.returncode == 2 and "from 1 to 1000" in refused.stderr


def test_cli_errors_are_one_line_and_exit_2(settings, tmp_path):
    missing = maas(settings, "admin", "keys", "create", "--tenant", "no-such-tenant")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "maas: no tenant with id or name 'no-such-tenant'"

    unset = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "current"],
        cwd=REPO,
        env={**inherited_env(), "MAAS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unset.returncode == 2
    assert "MAAS_DATABASE_URL not set" in unset.stderr


def test_db_current_reports_head(settings):
    head = ScriptDirectory.from_config(runner.alembic_config(settings.database_url)).get_current_head()
    result = maas(settings, "db", "current")
    assert result.returncode == 0
    assert f"database at revision: {head}" in result.stdout
