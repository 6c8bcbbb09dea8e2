"""The trained model's artifacts: ONNX (input ``input`` float32 ``[batch, features]``,
output ``logits`` ``[batch, classes]``, the batch dimension dynamic) checked with
``onnx.checker`` and compared with the torch model under ONNX Runtime, and the state
dict as safetensors. Runs on one process, on CPU.

A text classifier (``training.text_encoder``) exports differently: input ``input_ids``
int64 ``[batch, tokens]`` (both dimensions dynamic), outputs ``scores`` (softmax, first,
so that a compression job measures them) and ``label`` (the class name, a string, picked
in the graph by ArgMax and Gather), with its tokenizer declared in the file's metadata
(``core.text_model``) so that clients send strings. A text regression head exports one output,
``value`` float32 ``[batch]``, and no label. Text models go through the TorchScript exporter (a
seventh of the dynamo exporter's time for the same graph); the others through dynamo's.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import save_file
from torch import nn

if TYPE_CHECKING:
    from training.text_encoder import TextClassifier

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TEXT_IDS_INPUT = "input_ids"
TEXT_INPUT = "text"
SCORES_OUTPUT = "scores"
LABEL_OUTPUT = "label"
VALUE_OUTPUT = "value"


def export_onnx(model: nn.Module, num_features: int, path: Path, classes: Sequence[Any] = ()) -> None:
    """Write ``model`` (in eval mode) as one self-contained ONNX file and check it."""
    from training.text_encoder import TextClassifier

    if isinstance(model, TextClassifier):
        export_text_onnx(model, path, classes)
        return
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
    """The largest absolute difference between ONNX Runtime's and torch's outputs on ``x``
    (logits; a text classifier's scores)."""
    from training.text_encoder import TextClassifier

    model.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if isinstance(model, TextClassifier):
        wrapped = _Values(model) if model.regression else _Scores(model)
        output = VALUE_OUTPUT if model.regression else SCORES_OUTPUT
        (onnx_out,) = session.run([output], {TEXT_IDS_INPUT: x.numpy().astype(np.int64)})
        with torch.no_grad():
            torch_out = wrapped(x).numpy()
    else:
        (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})
        with torch.no_grad():
            torch_out = model(x).numpy()
    return float(np.abs(onnx_out - torch_out).max())


class _Scores(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_ids), dim=1)


class _Values(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[:, 0]


def export_text_onnx(model: TextClassifier, path: Path, classes: Sequence[Any]) -> None:
    """A text classifier as ONNX: ids in; scores and the label out (a regression head: the
    value out); its tokenizer declared."""
    from core.text_model import TOKENIZER_KEY, TextDeclaration
    from training.text_encoder import tokenizer_json

    model.eval()
    # a fresh wrapper is in training mode, which the exporter would restore onto the model when it is done
    wrapped = (_Values(model) if model.regression else _Scores(model)).eval()
    output = VALUE_OUTPUT if model.regression else SCORES_OUTPUT
    # two rows of different lengths, neither 1, so no axis is specialised by the tracer; the tracer runs the model,
    # so ids any vocabulary has, and the padding id where the shorter row ends
    ids = [i for i in range(1, 7) if i != model.pad_id][:5]
    example = torch.tensor([[*ids[:4], model.pad_id], ids], dtype=torch.int64)
    # The TorchScript exporter, not dynamo's: 1 s for MiniLM against 7 s (torch.export's tracing and decompositions,
    # then the translation), for the same graph to the quantizer (plain MatMul/Softmax, as many quantized) and the
    # same outputs to 1e-7 at every batch size and length.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=[TEXT_IDS_INPUT],
            output_names=[output],
            dynamic_axes={TEXT_IDS_INPUT: {0: "batch", 1: "tokens"}, output: {0: "batch"}},
            opset_version=18,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    if not model.regression:
        _add_label_output(graph, [str(c) for c in classes])
    declared = TextDeclaration(TEXT_INPUT, TEXT_IDS_INPUT, model.max_length, model.pad_id)
    onnx.helper.set_model_props(
        graph, {"maas.text": declared.to_json(), TOKENIZER_KEY: tokenizer_json(model.pretrained)}
    )
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _add_label_output(model: onnx.ModelProto, classes: list[str]) -> None:
    """``label = classes[argmax(scores)]``: the class name of each row, as a string."""
    graph = model.graph
    encoded: Any = [c.encode() for c in classes]  # the stub knows numbers only; a STRING tensor takes bytes
    names = onnx.helper.make_tensor("label_names", onnx.TensorProto.STRING, [len(classes)], encoded)
    graph.initializer.append(names)
    graph.node.extend(
        [
            onnx.helper.make_node("ArgMax", [SCORES_OUTPUT], ["label_index"], axis=1, keepdims=0, name="label_argmax"),
            onnx.helper.make_node(
                "Gather", ["label_names", "label_index"], [LABEL_OUTPUT], axis=0, name="label_gather"
            ),
        ]
    )
    graph.output.append(onnx.helper.make_tensor_value_info(LABEL_OUTPUT, onnx.TensorProto.STRING, ["batch"]))


def save_state_dict(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
