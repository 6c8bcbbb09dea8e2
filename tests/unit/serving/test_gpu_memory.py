"""A model server's GPU budget and GPU memory: ``nvidia-smi``'s answers parsed (samples of its documented CSV
output), and the I/O run against a stand-in ``nvidia-smi`` on ``PATH`` (a shell script that answers like it and
notes its arguments), or none: a machine without a GPU gets budget 0 and never runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import Settings
from serving.memory import (
    GPU_SHARE,
    gpu_memory_budget,
    gpu_total_bytes,
    gpu_used_bytes,
    process_gpu_bytes,
    visible_gpu,
)

MIB = 1 << 20
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put an ``nvidia-smi`` that prints ``answer`` on PATH (alone); its arguments land in the returned file."""
    calls = tmp_path / "calls"

    def install(answer: str) -> Path:
        script = tmp_path / "bin" / "nvidia-smi"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nprintf %s "{answer}"\n')
        script.chmod(0o755)
        monkeypatch.setenv("PATH", str(script.parent))
        return calls

    return install


def test_the_total_is_read_in_mib():
    assert gpu_total_bytes("143771\n") == 143771 * MIB
    assert gpu_total_bytes("") == 0
    assert gpu_total_bytes("No devices were found\n") == 0


def test_a_process_gpu_memory_is_the_sum_of_its_lines_and_others_are_ignored():
    apps = "4242, 1024\n977, 2048\n4242, 512\n"  # one line per process and device
    assert process_gpu_bytes(apps, 4242) == 1536 * MIB
    assert process_gpu_bytes(apps, 42) == 0
    assert process_gpu_bytes("4242, [N/A]\n", 4242) == 0  # where the driver does not say
    assert process_gpu_bytes("", 4242) == 0


def test_the_device_is_the_first_visible_one():
    assert visible_gpu(None) == "0"
    assert visible_gpu("") == "0"
    assert visible_gpu("2,0") == "2"
    assert visible_gpu("GPU-8d2f1c3e-aaaa-bbbb") == "GPU-8d2f1c3e-aaaa-bbbb"


def test_without_the_cuda_provider_there_is_no_gpu_budget_and_nvidia_smi_never_runs(nvidia_smi):
    calls = nvidia_smi("80000\n")
    assert gpu_memory_budget(Settings(model_server_gpu_memory_bytes=1 << 30), ["CPUExecutionProvider"]) == 0
    assert not calls.exists()


def test_a_set_gpu_budget_is_used_as_is(nvidia_smi):
    calls = nvidia_smi("80000\n")
    assert gpu_memory_budget(Settings(model_server_gpu_memory_bytes=5 << 30), CUDA) == 5 << 30
    assert not calls.exists()


def test_the_default_gpu_budget_is_a_share_of_the_visible_device_split_among_the_servers(nvidia_smi, monkeypatch):
    calls = nvidia_smi("80000\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    budget = gpu_memory_budget(Settings(inference_servers_per_host=2), CUDA)
    assert budget == int(80000 * MIB * GPU_SHARE) // 2
    assert calls.read_text().split() == [
        "--query-gpu=memory.total",
        "--format=csv,noheader,nounits",
        "-i",
        "1",
    ]


def test_without_nvidia_smi_there_is_no_gpu_budget_nor_gpu_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert gpu_memory_budget(Settings(), CUDA) == 0
    assert gpu_used_bytes() == 0


def test_a_failing_nvidia_smi_means_no_gpu_budget(tmp_path, monkeypatch):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_memory_budget(Settings(), CUDA) == 0


def test_this_process_gpu_memory_is_read_from_the_compute_apps(nvidia_smi):
    calls = nvidia_smi(f"1, 999\n{os.getpid()}, 300\n")
    assert gpu_used_bytes() == 300 * MIB
    assert "--query-compute-apps=pid,used_memory" in calls.read_text()
