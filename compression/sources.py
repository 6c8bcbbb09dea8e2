"""Loading a compression source into a ``ModelState``: a zoo model's safetensors state dict
(with its architecture), an ONNX file, or both (a model version the platform trained).

Owns: building the zoo model and loading the tensors with ``safetensors`` (no pickle, strict:
every tensor must be there with its shape), the number of outputs read from the state dict,
and checking that a stored ONNX graph computes what the weights compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from compression.data import Inputs
from compression.passes import MAX_PARITY_ABS_DIFF, PARITY_ROWS, ModelState
from compression.spec import ZooSpec, state_dict_classes
from training.zoo import build_model


class SourceError(ValueError):
    """A source model that cannot be loaded as given."""


def zoo_model(weights: Path, zoo: ZooSpec, num_features: int, num_classes: int | None = None) -> nn.Module:
    """The zoo model ``zoo`` holding the tensors of the safetensors file ``weights``."""
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise SourceError(f"not a readable .safetensors file: {exc}") from exc
    classes = num_classes or state_dict_classes({name: {"shape": list(t.shape)} for name, t in state.items()})
    if classes is None:
        raise SourceError("the state dict is not a zoo model's (no numbered blocks with an output layer)")
    try:
        model = build_model(zoo, num_features, classes)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise SourceError(f"the state dict does not fit a {zoo.arch} {zoo.model_dump()}: {exc}") from exc
    return model.eval()


def source_state(
    zoo: ZooSpec | None,
    weights: Path | None,
    onnx_path: Path,
    sample: Inputs,
    *,
    num_classes: int | None = None,
) -> ModelState:
    """The source's state: ONNX only without ``zoo``/``weights``; else the zoo model, exported to
    ``onnx_path`` when that file does not exist yet, or checked against it when it does."""
    if zoo is None or weights is None:
        return ModelState.from_onnx(onnx_path)
    if isinstance(sample, dict):
        raise SourceError(f"a {zoo.arch} takes rows of an array X, not named inputs ({', '.join(sample)})")
    model = zoo_model(weights, zoo, int(sample.shape[1]), num_classes)
    if not onnx_path.exists():
        return ModelState.from_torch(model, zoo, onnx_path, sample)
    _check_parity(model, onnx_path, sample)
    return ModelState.from_torch(model, zoo, onnx_path, sample, export=False)


def _check_parity(model: nn.Module, onnx_path: Path, sample: np.ndarray) -> None:
    from compression.fidelity import make_session, run_batches
    from compression.passes import fit_to_inputs

    rows = np.ascontiguousarray(sample[:PARITY_ROWS], dtype=np.float32)
    graph = run_batches(make_session(onnx_path, intra_op_threads=1), [fit_to_inputs(onnx_path, rows)])
    with torch.no_grad():
        weights = model(torch.from_numpy(rows)).numpy()
    diff = float(np.abs(graph - weights).max())
    if not diff <= MAX_PARITY_ABS_DIFF:
        raise SourceError(f"the stored ONNX graph and the weights disagree by {diff:.3g} (max {MAX_PARITY_ABS_DIFF})")
