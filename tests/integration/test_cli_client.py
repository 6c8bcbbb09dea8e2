"""The ``maas`` client commands as a person and a script run them, against the real API and worker:
``login`` stores the key 0600, ``--output json`` parses, a bad spec exits non-zero naming the field's
pointer, ``jobs submit --wait`` follows a job to its end with the outcome in the exit code, and in a
real terminal (tmux) the live progress bar moves and Ctrl-C asks whether to cancel the job.
"""

from __future__ import annotations

import json
import secrets
import stat
import sys

import numpy as np
import pytest

from tests.support.datasets import npz
from tests.support.eventually import eventually_async
from tests.support.terminal import Tmux, cli_env, maas, tmux_missing


@pytest.fixture
def env(api, tenant, tmp_path):
    return cli_env(tmp_path, str(api.make_url("")).rstrip("/"), tenant.key)


async def test_login_stores_the_key_for_the_owner_only_and_the_commands_use_it(api, tenant, tmp_path):
    env = cli_env(tmp_path, str(api.make_url("")).rstrip("/"), None)
    refused = await maas(env, "login", "--api-key", "maas_00000000_nope")
    assert refused.returncode == 1 and "401" in refused.stderr
    assert not (tmp_path / ".config/maas/credentials.json").exists()

    logged_in = await maas(env, "login", "--api-key", tenant.key)
    assert logged_in.returncode == 0, logged_in.stderr
    stored = tmp_path / ".config/maas/credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["api_key"] == tenant.key

    (tmp_path / "d.npz").write_bytes(npz(X=np.ones((4, 2), np.float32), y=np.arange(4)))
    uploaded = await maas(env, "files", "upload", str(tmp_path / "d.npz"), "--output", "json")  # the stored key
    assert uploaded.returncode == 0, uploaded.stderr
    file = json.loads(uploaded.stdout)
    listed = await maas(env, "files", "list", "--output", "json")
    assert [f["id"] for f in json.loads(listed.stdout)] == [file["id"]]
    text = await maas(env, "files", "list")
    assert file["id"] in text.stdout and "d.npz" in text.stdout


async def test_submit_wait_exits_with_the_outcome_and_json_parses(env, job_worker, tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"type": "test.sleep", "spec": {"steps": 3}}))
    ok = await maas(env, "jobs", "submit", str(tmp_path / "ok.json"), "--wait")
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stdout and "final_loss" in ok.stdout  # the summary table's metrics

    (tmp_path / "fails.json").write_text(json.dumps({"steps": 2, "fail_with": "boom"}))
    failed = await maas(env, "jobs", "submit", str(tmp_path / "fails.json"), "--type", "test.sleep", "--wait")
    assert failed.returncode == 1
    assert "failed" in failed.stdout and "boom: failing as the spec asked" in failed.stderr

    as_json = await maas(env, "jobs", "submit", str(tmp_path / "ok.json"), "--wait", "--output", "json")
    job = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and job["status"] == "succeeded" and job["metrics"]["final_loss"]
    for args in (["jobs", "get", job["id"]], ["jobs", "list"], ["jobs", "logs", job["id"]], ["models", "list"]):
        done = await maas(env, *args, "--output", "json")
        assert done.returncode == 0, (args, done.stderr)
        json.loads(done.stdout)
    events = json.loads((await maas(env, "jobs", "logs", job["id"], "--output", "json")).stdout)
    assert events[-1]["data"]["status"] == "succeeded"
    followed = await maas(env, "jobs", "logs", job["id"], "-f")  # a finished job: its events, then the summary
    assert followed.returncode == 0 and "status           succeeded" in followed.stdout and "summary" in followed.stdout


async def test_a_bad_spec_exits_non_zero_with_the_pointer(env, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"type": "training", "spec": {"model": {"arch": "resnet152"}}}))
    bad = await maas(env, "jobs", "submit", str(tmp_path / "bad.json"), "--wait")
    assert bad.returncode == 1 and bad.stdout == ""
    assert "422" in bad.stderr and "/spec/model/arch" in bad.stderr
    as_json = await maas(env, "jobs", "submit", str(tmp_path / "bad.json"), "--output", "json")
    problem = json.loads(as_json.stdout)["error"]
    assert as_json.returncode == 1 and "/spec/model/arch" in [e["pointer"] for e in problem["errors"]]


@pytest.mark.skipif(tmux_missing(), reason="tmux is not installed (.ci/run installs it)")
async def test_the_progress_bar_in_a_terminal_and_ctrl_c_cancels_when_asked(env, api, tenant, job_worker, tmp_path):
    (tmp_path / "long.json").write_text(json.dumps({"type": "test.sleep", "spec": {"steps": 60, "seconds": 30}}))
    terminal = Tmux(
        f"maas-{secrets.token_hex(4)}",
        [sys.executable, "-m", "cli.main", "jobs", "submit", str(tmp_path / "long.json"), "--wait"],
        env,
    )
    try:
        # the bar: the job id, step/total and the loss the job reports, moving
        first = await eventually_async(lambda: _bar(terminal.screen()), 60, lambda: terminal.screen())
        later = await eventually_async(
            lambda: (b := _bar(terminal.screen())) and b != first and b, 30, lambda: terminal.screen()
        )
        assert "/60" in later and "loss" in later and "ETA" in later
        terminal.keys("C-c")
        await eventually_async(lambda: "Cancel job" in terminal.screen(), 30, lambda: terminal.screen())
        terminal.keys("y", "Enter")
        screen = await eventually_async(lambda: "EXIT=" in (s := terminal.screen()) and s, 60, terminal.screen)
    finally:
        terminal.close()
    assert "EXIT=3" in screen and "canceled" in screen
    job_id = next(word for word in screen.split() if word.startswith("job_"))
    response = await api.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert (await response.json())["status"] == "canceled"


def _bar(screen: str) -> str | None:
    """The progress bar's line and the values under it (``step ━━━ 12/60 ETA 0:00:18 / loss 0.08``),
    None before the bar shows its total."""
    lines = screen.splitlines()
    for at, line in enumerate(lines[:-1]):
        if line.lstrip().startswith("step ") and "/60" in line:
            return f"{line.strip()} / {lines[at + 1].strip()}"
    return None
