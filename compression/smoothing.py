"""Activation smoothing (SmoothQuant) for ONNX MatMuls, ahead of int8 quantization.

Owns: measuring per-channel activation ranges at the inputs of weight MatMuls on calibration
data, and moving part of each outlier channel's range into the weights: ``X·W = (X/s)·(s·W)``
with ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``. The float model computes the same function (up to
rounding); the int8 model no longer spends its single activation scale on a few outlier
channels. MatMuls that read the same activation share one ``Mul`` by ``1/s``.

See Xiao et al., "SmoothQuant" (2022). ORT ships SmoothQuant only for static quantization (and
through another package); this pass serves dynamic quantization too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.fidelity import make_session
from compression.quantize import name_unnamed_nodes


@dataclass(frozen=True)
class SmoothGroup:
    """Weight MatMuls reading one activation tensor, with their weight initializers."""

    activation: str
    nodes: tuple[str, ...]
    weights: tuple[str, ...]


def smoothable_groups(model: onnx.ModelProto, *, exclude_nodes: Iterable[str] = ()) -> list[SmoothGroup]:
    """MatMuls with a 2-D constant fp32 weight as second input, grouped by their activation input.

    Other readers of the activation (a residual Add, say) keep reading the unscaled tensor.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    excluded = set(exclude_nodes)
    members: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name in excluded:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        if node.input[0] in initializers:
            continue
        members[node.input[0]].append(node)
    readers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] += 1
    groups: list[SmoothGroup] = []
    for activation, nodes in members.items():
        weights = [n.input[1] for n in nodes]
        # a weight also read elsewhere would be rescaled for a reader that is not rescaled
        if any(readers[w] != weights.count(w) for w in set(weights)):
            continue
        groups.append(SmoothGroup(activation, tuple(n.name for n in nodes), tuple(weights)))
    return groups


def channel_absmax(
    model: onnx.ModelProto,
    activations: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    intra_op_threads: int,
) -> dict[str, np.ndarray]:
    """Max |x| per last-axis channel of each named tensor, over all ``batches``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_inputs = {i.name for i in probe.graph.input}
    computed = [name for name in activations if name not in graph_inputs]
    existing = {o.name for o in probe.graph.output}
    for name in computed:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), intra_op_threads=intra_op_threads)
    wanted = {i.name for i in session.get_inputs()}
    peaks: dict[str, np.ndarray] = {}
    for batch in batches:
        feed = {k: v for k, v in batch.items() if k in wanted}
        values = dict(zip(computed, session.run(computed, feed), strict=True)) if computed else {}
        values.update({name: feed[name] for name in activations if name in graph_inputs})
        for name in activations:
            value = np.asarray(values[name])
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def smoothing_scales(activation_peak: np.ndarray, weight_peak: np.ndarray, alpha: float) -> np.ndarray:
    """Per input channel ``s = a^alpha / w^(1-alpha)``, guarded so dead channels keep scale 1."""
    a = np.asarray(activation_peak, dtype=np.float64)
    w = np.asarray(weight_peak, dtype=np.float64)
    alive = (a > 1e-5) & (w > 1e-5)
    scales = np.ones_like(a)
    scales[alive] = a[alive] ** alpha / w[alive] ** (1.0 - alpha)
    return np.clip(scales, 1e-4, 1e4).astype(np.float32)


def smooth_model(
    model: onnx.ModelProto,
    peaks: Mapping[str, np.ndarray],
    *,
    alpha: float = 0.5,
    exclude_nodes: Iterable[str] = (),
) -> list[SmoothGroup]:
    """Apply smoothing in place to every group whose activation has measured ``peaks``."""
    name_unnamed_nodes(model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    groups = [g for g in smoothable_groups(model, exclude_nodes=exclude_nodes) if g.activation in peaks]
    by_name = {node.name: node for node in graph.node}
    done: list[SmoothGroup] = []
    inserted: dict[str, onnx.NodeProto] = {}
    for group in groups:
        weights = {name: numpy_helper.to_array(initializers[name]) for name in set(group.weights)}
        channels = peaks[group.activation].shape[0]
        if any(w.shape[0] != channels for w in weights.values()):
            continue
        weight_peak = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        scales = smoothing_scales(peaks[group.activation], weight_peak, alpha)
        for name, w in weights.items():
            initializers[name].CopyFrom(numpy_helper.from_array((w * scales[:, None]).astype(np.float32), name))
        inverse_name = f"{group.activation}_smooth_inv"
        smoothed = f"{group.activation}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse_name))
        inserted[group.nodes[0]] = helper.make_node(
            "Mul", [group.activation, inverse_name], [smoothed], name=f"{group.activation}_smooth"
        )
        for node_name in group.nodes:
            by_name[node_name].input[0] = smoothed
        done.append(group)
    # each Mul goes just before the first MatMul of its group, keeping the graph sorted
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in inserted:
            ordered.append(inserted[node.name])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return done


def smooth_onnx(
    src: str | Path,
    dst: str | Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    alpha: float = 0.5,
    intra_op_threads: int = 1,
    exclude_nodes: Iterable[str] = (),
    peaks: Mapping[str, np.ndarray] | None = None,
) -> list[SmoothGroup]:
    """File to file: measure activation peaks on ``calibration`` (unless given) and smooth."""
    model = onnx.load(str(src))
    if peaks is None:
        groups = smoothable_groups(model, exclude_nodes=exclude_nodes)
        peaks = channel_absmax(model, [g.activation for g in groups], calibration, intra_op_threads=intra_op_threads)
    done = smooth_model(model, peaks, alpha=alpha, exclude_nodes=exclude_nodes)
    onnx.save(model, str(dst))
    return done
