"""Compression data for a model with several inputs: an npz with one array per input (named after
it, or mapped in ``inputs``), checked before a job is created on the stored details and on the
worker on the arrays themselves with the same pointer and message; and the passes (dynamic and
static int8, fp16) measured against the source's outputs when there are no labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression import pipeline
from compression.data import DataError, assemble, count_rows, read_rows
from compression.passes import ModelState
from compression.spec import CompressionSpec, SourceFacts, check_data_fits
from core.onnx_signature import read_signature
from tests.support.compression_models import masked_mean_encoder, token_batch

FAST = {"latency_iterations": 3, "throughput_iterations": 2, "warmup": 1, "throughput_batch": 8}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return masked_mean_encoder(tmp_path_factory.mktemp("encoder") / "encoder.onnx")


@pytest.fixture(scope="module")
def inputs(encoder: Path) -> list[dict[str, Any]]:
    import onnx

    return read_signature(onnx.load(str(encoder)))["inputs"]


def spec(**changes: Any) -> CompressionSpec:
    body: dict[str, Any] = {
        "source": {"model": "encoder"},
        "passes": [{"kind": "quantize", "mode": "dynamic"}],
        "eval": {"file_id": "file_eval"},
        **changes,
    }
    return CompressionSpec.model_validate(body)


def details(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the upload validator records of an npz."""
    return {"arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


GOOD = token_batch(20)
# (what is wrong, the arrays, the eval spec's changes, the pointer that names it)
REFUSED = [
    ("missing input", {"input_ids": GOOD["input_ids"]}, {}, "/eval/inputs"),
    ("only X", {"X": np.zeros((20, 12), np.float32)}, {}, "/eval/inputs"),
    (
        "unknown array",
        {"input_ids": GOOD["input_ids"], "mask": GOOD["attention_mask"]},
        {"inputs": {"attention_mask": "masks"}},
        "/eval/inputs/attention_mask",
    ),
    ("unknown input", GOOD, {"inputs": {"token_type_ids": "input_ids"}}, "/eval/inputs/token_type_ids"),
    ("wrong dtype", {**GOOD, "input_ids": GOOD["input_ids"].astype(np.float32)}, {}, "/eval/file_id"),
    (
        "wrong dtype of a mapped array",
        {**GOOD, "mask": GOOD["attention_mask"].astype(np.float64)},
        {"inputs": {"attention_mask": "mask"}},
        "/eval/inputs/attention_mask",
    ),
    ("shape mismatch", {**GOOD, "attention_mask": GOOD["attention_mask"][:, :, None]}, {}, "/eval/file_id"),
    ("row counts differ", {**GOOD, "attention_mask": GOOD["attention_mask"][:10]}, {}, "/eval/file_id"),
    ("a label column", GOOD, {"label_column": "y"}, "/eval/label_column"),
]


@pytest.mark.parametrize(("arrays", "changes", "pointer"), [case[1:] for case in REFUSED], ids=[c[0] for c in REFUSED])
def test_each_refusal_names_its_pointer_before_the_job_and_on_the_worker_alike(
    inputs: list[dict[str, Any]], tmp_path: Path, arrays: dict[str, np.ndarray], changes: dict, pointer: str
) -> None:
    body = spec(eval={"file_id": "file_eval", **changes})
    facts = SourceFacts("model 'encoder' version 1", None, None, 16, inputs)
    problems = check_data_fits(body, facts, {"/eval": details(arrays)})
    assert [p["pointer"] for p in problems] == [pointer], problems

    # the worker reads the file itself: the same pointer and the same words
    with pytest.raises(DataError) as caught:
        read_rows(write_npz(tmp_path / "eval.npz", arrays), body.eval, "/eval", inputs)
    assert caught.value.problem == problems[0]


def test_calibration_and_dataset_files_are_checked_under_their_own_pointers(inputs: list[dict[str, Any]]) -> None:
    body = spec(
        dataset={"file_id": "file_train"},
        passes=[{"kind": "quantize", "mode": "static", "calibration": {"file_id": "file_cal", "rows": 8}}],
    )
    facts = SourceFacts("model 'encoder' version 1", None, None, 16, inputs)
    unmapped = {"input_ids": GOOD["input_ids"]}
    found = check_data_fits(
        body,
        facts,
        {"/eval": details(GOOD), "/dataset": details(unmapped), "/passes/0/calibration": details(unmapped)},
    )
    # a dataset without labels is fine when nothing trains on it: it only calibrates
    assert [p["pointer"] for p in found] == ["/dataset/inputs", "/passes/0/calibration/inputs"]
    assert check_data_fits(body, facts, {"/eval": details(GOOD), "/dataset": details(GOOD)}) == []


def test_a_signature_unknown_before_the_job_is_checked_on_the_worker() -> None:
    facts = SourceFacts("file 'encoder.onnx'", None, None, None, [])
    assert check_data_fits(spec(), facts, {"/eval": details({"input_ids": GOOD["input_ids"]})}) == []


def test_inputs_apply_to_an_npz_only() -> None:
    with pytest.raises(ValueError, match="inputs"):
        spec(eval={"builtin": "digits", "inputs": {"a": "b"}})
    facts = SourceFacts("model 'encoder' version 1", None, None, 16, [{"name": "x", "datatype": "FP32"}])
    table = {"columns": ["a", "b"], "rows": 3}
    body = spec(eval={"file_id": "file_eval", "inputs": {"x": "a"}})
    assert [p["pointer"] for p in check_data_fits(body, facts, {"/eval": table})] == ["/eval/inputs"]


def test_named_rows_keep_their_dtypes_and_labels_and_spread_for_calibration(inputs, tmp_path: Path) -> None:
    labels = np.arange(20) % 3
    path = write_npz(tmp_path / "eval.npz", {**GOOD, "y": labels, "unused": np.zeros(4)})
    body = spec(passes=[{"kind": "quantize", "mode": "static", "calibration": {"rows": 5}}])
    data = assemble(body, lambda d, p: read_rows(path, d, p, inputs), num_outputs=16)
    assert isinstance(data.eval_x, dict) and sorted(data.eval_x) == ["attention_mask", "input_ids"]
    assert data.eval_x["input_ids"].dtype == np.int64 and count_rows(data.eval_x) == 20
    assert data.eval_y is not None and list(data.eval_y[:4]) == [0, 1, 2, 0]
    calibration = data.calibration[0]
    assert isinstance(calibration, dict) and count_rows(calibration) == 5
    assert data.notes == ["pass 0 calibrates on 5 rows of the eval rows (no other data was given)"]
    np.testing.assert_array_equal(calibration["attention_mask"][0], GOOD["attention_mask"][0])


@pytest.mark.parametrize(
    "quantize",
    [
        {"kind": "quantize", "mode": "dynamic"},
        {"kind": "quantize", "mode": "static", "calibration": {"rows": 32}},
        {"kind": "quantize", "mode": "fp16"},
    ],
    ids=["dynamic", "static", "fp16"],
)
def test_a_two_input_model_is_quantized_and_measured_against_its_source(
    encoder: Path, inputs, tmp_path: Path, quantize: dict
) -> None:
    path = write_npz(tmp_path / "eval.npz", token_batch(64))
    body = spec(passes=[quantize], measurement=FAST)
    data = assemble(body, lambda d, p: read_rows(path, d, p, inputs), num_outputs=16)
    result = pipeline.run(
        ModelState.from_onnx(encoder), body.passes, data, tmp_path / "stages", measurement=body.measurement
    )

    source, quantized = result.report["stages"]
    assert source["accuracy"] is None and source["mean_cosine"] == pytest.approx(1.0)
    assert 0.99 <= quantized["mean_cosine"] <= 1.0 and quantized["min_cosine"] >= 0.95
    assert 0 < quantized["max_abs_error"] < 1.0  # outputs of a few units each
    assert quantized["onnx_bytes"] < 0.6 * source["onnx_bytes"]
    assert quantized["latency_p50_ms"] > 0 and quantized["throughput_items_per_s"] > 0
