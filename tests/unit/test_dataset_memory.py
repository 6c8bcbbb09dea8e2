"""The estimate a training job checks before torchrun starts: its datasets, read once per rank,
against the memory the worker has available."""

from __future__ import annotations

from job_types.base import JobFailed
from job_types.dataset_memory import available_memory, cgroup_headroom, dataset_bytes, memory_shortfall

GB = 1_000_000_000


def test_data_that_fits_every_rank_is_no_failure() -> None:
    assert memory_shortfall(2 * GB, 4, 8 * GB) is None
    assert memory_shortfall(0, 8, 0) is None  # a builtin dataset: nothing counted


def test_every_rank_on_the_node_counts() -> None:
    assert memory_shortfall(2 * GB, 4, 7 * GB) is not None
    assert memory_shortfall(2 * GB, 3, 7 * GB) is None


def test_the_failure_names_the_need_the_ranks_and_what_is_available() -> None:
    failure = memory_shortfall(1_600_000_000, 4, 3 * GB)
    assert isinstance(failure, JobFailed)
    assert failure.code == "dataset_too_large"
    assert failure.message == (
        "the dataset needs about 6.4 GB of memory with 4 ranks (each loads all 1.6 GB), the worker has 3.0 GB available"
    )
    assert failure.details == {"needed_bytes": 6_400_000_000, "available_bytes": 3 * GB, "ranks": 4}


def test_one_rank_is_singular() -> None:
    failure = memory_shortfall(2 * GB, 1, GB)
    assert failure is not None
    assert "with 1 rank (" in failure.message


def test_dataset_bytes_are_the_stored_uncompressed_size() -> None:
    assert dataset_bytes({"arrays": {"X": {"dtype": "float32", "shape": [2, 3]}}, "uncompressed_bytes": 99}) == 99


def test_files_uploaded_before_the_size_was_stored_are_estimated_from_their_details() -> None:
    npz = {"arrays": {"X": {"dtype": "float32", "shape": [2000, 2000]}, "y": {"dtype": "int64", "shape": [2000]}}}
    assert dataset_bytes(npz) == 2000 * 2000 * 4 + 2000 * 8
    assert dataset_bytes({"columns": ["a", "b", "label"], "rows": 100}) == 100 * 3 * 8
    parquet = {"columns": [{"name": "a", "type": "int64"}, {"name": "label", "type": "string"}], "rows": 10}
    assert dataset_bytes(parquet) == 10 * 2 * 8
    assert dataset_bytes({}) == 0


def test_a_cgroup_limit_caps_what_is_available(tmp_path) -> None:
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("250000\n")
    assert cgroup_headroom(tmp_path) == 750_000


def test_no_cgroup_limit_is_no_cap(tmp_path) -> None:
    assert cgroup_headroom(tmp_path) is None  # no cgroup v2 files: not in a limited container
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("250000\n")
    assert cgroup_headroom(tmp_path) is None


def test_a_configured_budget_wins_over_what_the_machine_reports() -> None:
    assert available_memory(12345) == 12345
    assert available_memory(None) > 0
