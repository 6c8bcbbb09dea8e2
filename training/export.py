"""The trained model's artifacts: ONNX (input ``input`` float32 ``[batch, features]``,
output ``logits`` ``[batch, classes]``, the batch dimension dynamic) checked with
``onnx.checker`` and compared with the torch model under ONNX Runtime, and the state
dict as safetensors. Runs on one process, on CPU."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import save_file
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, num_features: int, path: Path) -> None:
    """Write ``model`` (in eval mode) as one self-contained ONNX file and check it."""
    model.eval()
    example = torch.zeros(2, num_features)  # not 1: a size-1 dimension would be specialised
    batch = torch.export.Dim("batch")
    # the exporter reports progress on stdout, which belongs to the JSON-lines protocol,
    # and warns about its own use of deprecated torch internals
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnx_max_abs_diff(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    """The largest absolute difference between ONNX Runtime's and torch's logits on ``x``."""
    model.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})
    with torch.no_grad():
        torch_logits = model(x).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def save_state_dict(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
