"""A training pool runs one job per GPU (one without); other pools take the configured concurrency."""

from __future__ import annotations

from workers.concurrency import default_concurrency, visible_gpus


def test_a_training_pool_runs_one_job_per_gpu_or_one_on_cpu() -> None:
    assert default_concurrency(["training"], configured=2, gpus=0) == 1
    assert default_concurrency(["training"], configured=2, gpus=4) == 4


def test_other_pools_take_the_configured_concurrency() -> None:
    assert default_concurrency(["inference"], configured=3, gpus=4) == 3
    assert default_concurrency(["training", "compression"], configured=2, gpus=0) == 2


def test_gpus_come_from_cuda_visible_devices_or_the_device_files(tmp_path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == 0
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({}, tmp_path) == 2
    assert visible_gpus({}, tmp_path / "missing") == 0
