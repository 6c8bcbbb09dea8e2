"""``python -m training.run`` without torchrun: a csv run end to end, and each failure
reported as one error line with its code and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from tests.support.training_runs import run_training, training_spec

FILE_DATASET = {"file_id": "file_01abc"}


def blobs(rows: int = 240, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, rows)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], dtype=np.float32)
    return (centers[labels] + rng.normal(0, 0.5, (rows, 4))).astype(np.float32) * scale, labels


def test_a_csv_run_without_torchrun(tmp_path: Path) -> None:
    x, labels = blobs()
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    table = pa.table({**{f"f{i}": x[:, i] for i in range(4)}, "species": names})
    pa_csv.write_csv(table, tmp_path / "iris-ish.csv")
    spec = training_spec(
        dataset={**FILE_DATASET, "label_column": "species"},
        hyperparameters={"epochs": 5, "max_steps": None, "lr": 0.05},
        checkpoint_every_steps=1000,
    )
    run = run_training(tmp_path, spec, None, "--data", str(tmp_path / "iris-ish.csv"))
    assert run.result["classes"] == ["setosa", "versicolor", "virginica"]
    assert run.metrics["val_accuracy"] >= 0.9
    assert run.result["input"]["shape"] == [None, 4]


def error_of(tmp_path: Path, spec: dict, *extra: str) -> dict:
    run = run_training(tmp_path, spec, None, *extra)
    assert run.returncode == 1, run.describe()
    assert [e["type"] for e in run.events][-1:] == ["error"] and len(run.of_type("error")) == 1, run.describe()
    return run.events[-1]


def test_data_that_does_not_fit_is_bad_dataset(tmp_path: Path) -> None:
    x, labels = blobs()
    np.savez(tmp_path / "d.npz", X=x[:, :3], y=labels)  # 3 features: no square image
    spec = training_spec(model={"arch": "cnn"}, dataset=FILE_DATASET)
    error = error_of(tmp_path, spec, "--data", str(tmp_path / "d.npz"))
    assert error["code"] == "bad_dataset" and error["pointer"] == "/model/arch"


def test_a_diverging_run_is_nan_loss(tmp_path: Path) -> None:
    x, labels = blobs(scale=1e30)  # finite inputs, but the logits overflow
    np.savez(tmp_path / "d.npz", X=x, y=labels)
    error = error_of(tmp_path, training_spec(dataset=FILE_DATASET), "--data", str(tmp_path / "d.npz"))
    assert error["code"] == "nan_loss"


def test_an_invalid_spec_is_bad_spec_with_pointers(tmp_path: Path) -> None:
    error = error_of(tmp_path, training_spec(hyperparameters={"lr": -1}))
    assert error["code"] == "bad_spec"
    assert [e["pointer"] for e in error["errors"]] == ["/hyperparameters/lr"]


def test_a_missing_checkpoint_is_bad_checkpoint(tmp_path: Path) -> None:
    error = error_of(tmp_path, training_spec(), "--resume", str(tmp_path / "checkpoints" / "step-5"))
    assert error["code"] == "bad_checkpoint"


def test_a_launch_that_does_not_match_the_spec_is_bad_launch(tmp_path: Path) -> None:
    error = error_of(tmp_path, training_spec("ddp", 2))
    assert error["code"] == "bad_launch"
