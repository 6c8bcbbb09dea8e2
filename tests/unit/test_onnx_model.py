"""ONNX Runtime side of serving: threads, the warm-up batch, and the model call."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from core.onnx_model import OnnxModel, inference_threads, session_options, warmup_inputs
from core.settings import Settings
from tests.support.onnx_models import linear_classifier


def test_threads_are_the_cores_shared_among_the_servers_of_the_host():
    assert inference_threads(Settings(), cores=16) == 16
    assert inference_threads(Settings(inference_servers_per_host=4), cores=16) == 4
    assert inference_threads(Settings(inference_servers_per_host=32), cores=16) == 1
    assert inference_threads(Settings(inference_threads=3), cores=16) == 3


def test_the_warm_up_batch_fills_the_batch_dimension_and_sets_other_free_dimensions_to_one():
    signature = {
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "fixed", "datatype": "FP16", "shape": [2, 2]},
        ]
    }
    arrays = warmup_inputs(signature, 16)
    assert {name: (a.shape, a.dtype.name) for name, a in arrays.items()} == {
        "ids": ((16, 1), "int64"),
        "image": ((16, 3, 8, 8), "float32"),
        "text": ((16,), "object"),
        "fixed": ((2, 2), "float16"),
    }


def test_the_model_call_returns_every_output_by_name():
    weight, bias = np.eye(4, 3, dtype=np.float32), np.zeros(3, np.float32)
    session = ort.InferenceSession(
        linear_classifier(weight, bias), sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    model = OnnxModel(session, [o.name for o in session.get_outputs()])
    x = np.array([[0, 0, 1, 0], [1, 0, 0, 0]], np.float32)
    x.flags.writeable = False  # decoded request tensors are read-only views
    outputs = model.run({"x": x})
    assert list(outputs) == ["scores", "label"]
    assert outputs["label"].tolist() == [2, 0]
    warm = model.run(warmup_inputs({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, 8))
    assert warm["scores"].shape == (8, 3)


def test_threads_spin_only_while_a_run_is_active_and_spinning_can_be_turned_off():
    spinning = session_options(2)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1"
    assert session_options(2, spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"


class Recording:
    """A stand-in session that says which one ran."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0

    def run(self, output_names: list[str], feed: dict) -> list[np.ndarray]:
        self.calls += 1
        return [np.full((len(feed["x"]), 1), self.calls, np.float32)]


def test_a_crowded_batch_runs_on_the_single_threaded_twin_when_there_is_one():
    main, twin = Recording("main"), Recording("twin")
    x = {"x": np.zeros((2, 4), np.float32)}
    model = OnnxModel(main, ["y"], twin)  # type: ignore[arg-type]
    model.run(x)
    model.run(x, crowded=True)
    model.run(x, crowded=True)
    assert (main.calls, twin.calls) == (1, 2)
    alone = OnnxModel(main, ["y"])  # type: ignore[arg-type]
    alone.run(x, crowded=True)
    assert main.calls == 2
