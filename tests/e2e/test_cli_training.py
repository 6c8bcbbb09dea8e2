"""``maas jobs submit --wait`` on a real training job (torchrun under a worker), in a real terminal:
the live bar shows step/total, epoch, loss, accuracy, samples/s and the ETA while it runs, the
summary table the final metrics, and the exit code is 0; then ``artifacts download``, ``deploy`` and
``predict`` on the model it registered, compared with ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import secrets
import sys

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.datasets import digits_bytes, npz
from tests.support.eventually import eventually_async
from tests.support.terminal import Tmux, cli_env, maas, tmux_missing

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("model_server")]


@pytest.mark.skipif(tmux_missing(), reason="tmux is not installed (.ci/run installs it)")
async def test_submit_wait_shows_live_progress_and_the_final_metrics(api, tenant, training_worker, tmp_path):
    env = cli_env(tmp_path, str(api.make_url("")).rstrip("/"), tenant.key)
    name = f"digits-cli-{secrets.token_hex(3)}"
    spec = {
        "type": "training",
        "spec": {
            "model": {"arch": "mlp", "hidden": [64]},
            "dataset": {"builtin": "digits"},
            "validation": {"fraction": 0.2},
            "strategy": {"kind": "ddp", "nproc_per_node": 1},
            "hyperparameters": {"epochs": 30, "batch_size": 16, "lr": 0.005, "seed": 0},
            "register_as": name,
        },
    }
    (tmp_path / "train.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "cli.main", "jobs", "submit", str(tmp_path / "train.json"), "--wait"]
    terminal = Tmux(f"maas-{secrets.token_hex(4)}", command, env)
    try:
        bar = await eventually_async(lambda: _bar(terminal.screen()), 300, terminal.screen)
        assert re.search(r"\d+/\d+", bar) and "epoch" in bar and "loss" in bar and "accuracy" in bar
        assert "samples/s" in bar and "ETA" in bar
        screen = await eventually_async(lambda: "EXIT=" in (s := terminal.screen()) and s, 600, terminal.screen)
    finally:
        terminal.close()
    assert "EXIT=0" in screen and "summary" in screen and "val_accuracy" in screen and "succeeded" in screen
    assert f"{name} v1" in screen

    job_id = re.findall(r"job_[0-9a-z]{26}", screen)[-1]  # the summary's
    job = json.loads((await maas(env, "jobs", "get", job_id, "--output", "json")).stdout)
    model_artifact = job["result"]["artifacts"]["model"]
    downloaded = await maas(env, "artifacts", "download", model_artifact, "-o", str(tmp_path / "model.onnx"))
    assert downloaded.returncode == 0 and "(checked)" in downloaded.stdout, downloaded.stderr

    deployed = await maas(env, "deploy", name, "--version", "1", "--wait", "--output", "json")
    assert deployed.returncode == 0 and json.loads(deployed.stdout)["status"] == "ready", deployed.stderr
    x = digits_bytes()[1][:5]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (tmp_path / "x.npz").write_bytes(npz(**{session.get_inputs()[0].name: x}))
    predicted = await maas(env, "predict", name, "--input", str(tmp_path / "x.npz"), "--output", "json")
    assert predicted.returncode == 0, predicted.stderr
    outputs = json.loads(predicted.stdout)
    for output, expected in zip(
        session.get_outputs(), session.run(None, {session.get_inputs()[0].name: x}), strict=True
    ):
        np.testing.assert_allclose(np.array(outputs[output.name]["data"]), expected, rtol=1e-5, atol=1e-5)


def _bar(screen: str) -> str | None:
    """The progress bar's line and the training values under it, None before they show."""
    lines = screen.splitlines()
    for at, line in enumerate(lines[:-1]):
        if line.lstrip().startswith("step ") and "samples/s" in lines[at + 1]:
            return f"{line.strip()} / {lines[at + 1].strip()}"
    return None
