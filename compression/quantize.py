"""ONNX model quantization: int8 (dynamic and static) and fp16, on top of ONNX Runtime's tools.

Owns: turning an fp32 ONNX file into a smaller one, with ONNX Runtime's pre-processing
(``quant_pre_process``: shape inference, and for static int8 basic graph optimisation) first; calibration readers
over in-memory arrays, checked against the model's inputs before any calibration runs; an int8
pass of its own for embedding tables (per-row scales, which ORT's per-tensor Gather quantization
lacks); and storing weights of nodes kept in float as fp16. Node and op-type exclusions are
validated, so a misspelt node name is an error, not a silently float-free model.

Example::

    quantize_dynamic_int8("model.onnx", "model.int8.onnx", per_channel=True)
    quantize_static_int8("model.onnx", "model.qdq.onnx", ArrayCalibrationReader.from_arrays({"x": xs}, 16))
    convert_fp16("model.onnx", "model.fp16.onnx")
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

ModelSource = str | Path | onnx.ModelProto
Dim = int | str | None

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "distribution": CalibrationMethod.Distribution,
}
# ops whose weights are the bulk of a model's bytes and its arithmetic
WEIGHT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
# 7-bit weights by default. On x86 CPUs without VNNI (AVX2, AVX-512F), ONNX Runtime's uint8 x int8
# kernels add pairs of products in int16 (VPMADDUBSW), which saturates with full-range weights:
# a model quantized with 8-bit weights lost up to 0.02 of mean cosine on such a host and none on
# a VNNI one. 7 bits cannot saturate, so a compressed model behaves the same on every x86 host.
REDUCE_RANGE = True

_log = logging.getLogger(__name__)


class QuantizationError(ValueError):
    """A quantization request that cannot be carried out as asked."""


class CalibrationMismatch(QuantizationError):
    """Calibration data that does not fit the model's inputs (name, dtype or shape)."""

    def __init__(self, input_name: str, expected: object, got: object, what: str = "shape") -> None:
        self.input_name = input_name
        self.expected = expected
        self.got = got
        self.what = what
        super().__init__(f"calibration input {input_name!r}: the model expects {what} {expected}, got {got}")


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``shape`` holds ints for fixed dims, names or None for free ones."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]


# ---------------------------------------------------------------- graph inspection (pure)


def load(model: ModelSource) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def model_input_specs(model: ModelSource) -> dict[str, InputSpec]:
    """The graph inputs that are not initializers, with their element type and shape."""
    proto = load(model)
    initializers = {init.name for init in proto.graph.initializer}
    specs: dict[str, InputSpec] = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims: list[Dim] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs[value.name] = InputSpec(value.name, dtype, tuple(dims))
    return specs


def shape_fits(expected: Sequence[Dim], got: Sequence[int]) -> bool:
    if len(expected) != len(got):
        return False
    return all(not isinstance(want, int) or want == have for want, have in zip(expected, got, strict=True))


def check_feed(specs: Mapping[str, InputSpec], feed: Mapping[str, np.ndarray]) -> None:
    """Raise ``CalibrationMismatch`` naming the first input that does not fit the model."""
    for name in feed:
        if name not in specs:
            raise CalibrationMismatch(name, f"one of the inputs {sorted(specs)}", "an unknown input", what="name")
    for name, spec in specs.items():
        if name not in feed:
            raise CalibrationMismatch(name, f"shape {_shape_text(spec.shape)}", "nothing", what="an array of")
        array = np.asarray(feed[name])
        if not shape_fits(spec.shape, array.shape):
            raise CalibrationMismatch(name, _shape_text(spec.shape), _shape_text(array.shape))
        if array.dtype.kind != spec.dtype.kind:
            raise CalibrationMismatch(name, spec.dtype.name, array.dtype.name, what="dtype")


def _shape_text(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in shape) + ")"


def node_names(model: ModelSource) -> list[str]:
    return [node.name for node in load(model).graph.node]


def op_type_counts(model: ModelSource) -> Counter[str]:
    return Counter(node.op_type for node in load(model).graph.node)


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: exclusion lists and sensitivity reports refer to them."""
    taken = {node.name for node in model.graph.node if node.name}
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        while True:
            counts[node.op_type] += 1
            candidate = f"{node.op_type}_{counts[node.op_type]}"
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)
    return model


@dataclass(frozen=True)
class WeightNode:
    """A node with a constant weight that int8 quantization would replace."""

    name: str
    op_type: str
    weight: str | None
    weight_elements: int


def weight_nodes(
    model: ModelSource, op_types: Iterable[str] = WEIGHT_OP_TYPES, *, const_only: bool = True
) -> list[WeightNode]:
    """Nodes of ``op_types`` in graph order; with ``const_only``, only those with an initializer weight."""
    proto = load(model)
    initializers = {init.name: init for init in proto.graph.initializer}
    wanted = set(op_types)
    found: list[WeightNode] = []
    for node in proto.graph.node:
        if node.op_type not in wanted:
            continue
        weight_input = 0 if node.op_type == "Gather" else 1
        weight = node.input[weight_input] if len(node.input) > weight_input else None
        init = initializers.get(weight) if weight else None
        if const_only and init is None:
            continue
        elements = int(np.prod(init.dims)) if init is not None else 0
        found.append(WeightNode(node.name, node.op_type, weight if init is not None else None, elements))
    return found


def _op_types_after_exclusion(
    registry: Iterable[str], op_types: Iterable[str] | None, exclude: Iterable[str]
) -> list[str]:
    chosen = list(op_types) if op_types is not None else list(registry)
    excluded = set(exclude)
    unknown = excluded - set(registry)
    if unknown:
        raise QuantizationError(f"cannot exclude op types the quantizer does not handle: {sorted(unknown)}")
    return [op for op in chosen if op not in excluded]


def _check_nodes_exist(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    names = list(names)
    missing = sorted(set(names) - {node.name for node in model.graph.node})
    if missing:
        raise QuantizationError(f"nodes to keep in float not found in the model: {missing}")
    return names


# ---------------------------------------------------------------- calibration


class ArrayCalibrationReader(CalibrationDataReader):
    """Calibration batches from in-memory arrays, checked against the model inputs up front.

    ``feeds`` is a sequence of ``{input name: array}`` batches; ``from_arrays`` splits whole arrays
    into batches along the first axis.
    """

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self.feeds = [{name: np.asarray(array) for name, array in feed.items()} for feed in feeds]
        if not self.feeds:
            raise QuantizationError("calibration data is empty")
        self._window = (0, len(self.feeds))
        self._cursor = 0

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], batch_size: int) -> ArrayCalibrationReader:
        rows = {name: np.asarray(array).shape[0] for name, array in arrays.items()}
        if len(set(rows.values())) > 1:
            raise QuantizationError(f"calibration arrays have different numbers of rows: {rows}")
        total = next(iter(rows.values()), 0)
        return cls(
            {name: np.asarray(array)[start : start + batch_size] for name, array in arrays.items()}
            for start in range(0, total, batch_size)
        )

    def check(self, model: ModelSource) -> None:
        specs = model_input_specs(model)
        for feed in self.feeds:
            check_feed(specs, feed)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._cursor >= self._window[1]:
            return None
        feed = self.feeds[self._cursor]
        self._cursor += 1
        return dict(feed)

    def rewind(self) -> None:
        """Back to the first batch of all of them (ORT's strided calibration narrows the window)."""
        self._window = (0, len(self.feeds))
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._window = (start_index, min(end_index, len(self.feeds)))
        self._cursor = start_index


def as_calibration_reader(
    calibration: ArrayCalibrationReader | Iterable[Mapping[str, np.ndarray]],
) -> ArrayCalibrationReader:
    return calibration if isinstance(calibration, ArrayCalibrationReader) else ArrayCalibrationReader(calibration)


# ---------------------------------------------------------------- pre-processing


@dataclass(frozen=True)
class Preprocessed:
    path: Path
    symbolic_shapes: bool


def preprocess(src: ModelSource, dst: str | Path, *, optimize: bool = True) -> Preprocessed:
    """ORT's quantization pre-processing, with symbolic shape inference when the graph allows it.

    Symbolic inference gives transformer graphs the shapes the quantizer needs, but it gives up
    on some exporter output; ONNX shape inference is then the fallback. ``optimize`` runs ORT's
    basic graph optimiser too; dynamic int8 turns it off, because the optimiser fuses
    MatMul + Add into Gemm, which ORT's dynamic quantizer does not handle.
    """
    dst = Path(dst).resolve()
    with _scratch() as scratch:
        # ORT's pre-processing handles file paths more reliably than in-memory models
        named = scratch / "named.onnx"
        onnx.save(name_unnamed_nodes(load(src)), str(named))
        # a failing symbolic pass dumps the model (with its weights) into the working directory
        with contextlib.chdir(scratch):
            try:
                quant_pre_process(named, dst, auto_merge=True, skip_optimization=not optimize)
                symbolic = True
            except Exception as exc:  # the symbolic pass raises bare Exceptions and TypeErrors alike
                _log.info("symbolic shape inference failed (%s); using ONNX shape inference only", exc)
                quant_pre_process(named, dst, skip_symbolic_shape=True, skip_optimization=not optimize)
                symbolic = False
    model = name_unnamed_nodes(onnx.load(str(dst)))
    onnx.save(model, str(dst))
    return Preprocessed(dst, symbolic)


def map_node_names(source: onnx.ModelProto, prepared: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """The nodes of ``prepared`` that stand for ``names`` of ``source``, through ORT's fusions.

    A fused node is found by the weight it reads (``fc1`` fused with its bias Add becomes a
    Gemm named ``fc1/MatMulAddFusion``, reading the same ``fc1.weight``) or by ORT's
    ``name/Fusion`` naming. Raises ``QuantizationError`` for names the source does not have.
    """
    source_nodes = {node.name: node for node in source.graph.node}
    _check_nodes_exist(source, names)
    initializers = {init.name for init in source.graph.initializer}
    prepared_names = {node.name for node in prepared.graph.node}
    mapped: list[str] = []
    for name in names:
        if name in prepared_names:
            mapped.append(name)
            continue
        weights = {i for i in source_nodes[name].input if i in initializers}
        found = [
            node.name for node in prepared.graph.node if weights & set(node.input) or node.name.startswith(f"{name}/")
        ]
        if not found:
            raise QuantizationError(f"node {name!r} did not survive pre-processing; keep it float without it")
        mapped += found
    return list(dict.fromkeys(mapped))


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="maas-quant-") as tmp:
        yield Path(tmp)


def _prepared(
    src: ModelSource, scratch: Path, run_preprocess: bool, exclude_nodes: Iterable[str], *, optimize: bool
) -> tuple[onnx.ModelProto, list[str]]:
    """The model to quantize and the names of its nodes to keep float."""
    source = name_unnamed_nodes(load(src))
    if not run_preprocess:
        return source, _check_nodes_exist(source, exclude_nodes)
    prepared = onnx.load(str(preprocess(source, scratch / "pre.onnx", optimize=optimize).path))
    return prepared, map_node_names(source, prepared, exclude_nodes)


# ---------------------------------------------------------------- int8 and fp16


def quantize_dynamic_int8(
    src: ModelSource,
    dst: str | Path,
    *,
    per_channel: bool = True,
    reduce_range: bool = REDUCE_RANGE,
    exclude_nodes: Iterable[str] = (),
    exclude_op_types: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
    run_preprocess: bool = True,
) -> Path:
    """Weights to int8 ahead of time, activations to uint8 per batch at run time.

    ``op_types`` defaults to every op ORT's dynamic quantizer handles (MatMul, Conv, Gather, ...).
    """
    dst = Path(dst)
    with _scratch() as scratch:
        model, excluded = _prepared(src, scratch, run_preprocess, exclude_nodes, optimize=False)
        chosen = _op_types_after_exclusion(IntegerOpsRegistry, op_types, exclude_op_types)
        quantize_dynamic(
            model,
            dst,
            op_types_to_quantize=chosen,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
    return dst


def quantize_static_int8(
    src: ModelSource,
    dst: str | Path,
    calibration: ArrayCalibrationReader | Iterable[Mapping[str, np.ndarray]],
    *,
    per_channel: bool = True,
    reduce_range: bool = REDUCE_RANGE,
    quant_format: Literal["qdq", "qoperator"] = "qdq",
    exclude_nodes: Iterable[str] = (),
    exclude_op_types: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
    calibrate_method: str = "minmax",
    symmetric_activations: bool = False,
    run_preprocess: bool = True,
) -> Path:
    """Weights and activations to int8 with ranges calibrated on ``calibration`` batches.

    Activations are uint8 and weights int8 (the pairing ORT recommends for x86 CPUs). The
    calibration batches are checked against the model inputs before anything runs.
    """
    if calibrate_method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibrate_method must be one of {sorted(CALIBRATION_METHODS)}")
    if quant_format not in ("qdq", "qoperator"):
        raise QuantizationError("quant_format must be 'qdq' or 'qoperator'")
    dst = Path(dst)
    reader = as_calibration_reader(calibration)
    with _scratch() as scratch:
        model, excluded = _prepared(src, scratch, run_preprocess, exclude_nodes, optimize=True)
        reader.check(model)
        registry = QDQRegistry if quant_format == "qdq" else QLinearOpsRegistry
        chosen = _op_types_after_exclusion(registry, op_types, exclude_op_types)
        prepared = scratch / "prepared.onnx"
        onnx.save(model, str(prepared))
        reader.rewind()
        quantize_static(
            prepared,
            dst,
            reader,
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=chosen,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CALIBRATION_METHODS[calibrate_method],
            extra_options={"ActivationSymmetric": symmetric_activations},
        )
    return dst


def convert_fp16(
    src: ModelSource,
    dst: str | Path,
    *,
    keep_io_types: bool = True,
    exclude_op_types: Iterable[str] = (),
    exclude_nodes: Iterable[str] = (),
) -> Path:
    """Weights and arithmetic to fp16; inputs and outputs stay fp32 unless ``keep_io_types`` is off.

    ``exclude_op_types`` run in fp32 behind Casts (e.g. reductions that overflow in fp16).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = name_unnamed_nodes(load(src))
    excluded_nodes = _check_nodes_exist(model, exclude_nodes)
    converted = convert_float_to_float16(
        model,
        keep_io_types=keep_io_types,
        op_block_list=list(exclude_op_types) or None,
        node_block_list=excluded_nodes or None,
    )
    dst = Path(dst)
    onnx.save(converted, str(dst))
    return dst


# ---------------------------------------------------------------- graph passes of our own


def per_row_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: ``table ≈ q * scale`` with ``scale`` of shape (rows, 1)."""
    table = np.asarray(table, dtype=np.float32)
    peak = np.max(np.abs(table), axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


def quantize_embedding_tables(
    model: onnx.ModelProto,
    *,
    min_elements: int = 1 << 16,
    exclude_nodes: Iterable[str] = (),
) -> list[str]:
    """Replace large Gather tables by int8 rows and one fp32 scale per row, in place.

    ``Gather(W, ids)`` becomes ``Cast(Gather(Wq, ids)) * Gather(scales, ids)``: only the gathered
    rows are dequantized at run time, and each row (one token's vector) keeps its own scale, so
    rare tokens with small vectors are not flattened by one outlier elsewhere in the table.
    Returns the names of the Gather nodes rewritten.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    excluded = set(exclude_nodes)
    rewritten: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 0)
        eligible = (
            table is not None
            and node.name not in excluded
            and axis == 0
            and len(table.dims) == 2
            and table.data_type == onnx.TensorProto.FLOAT
            and int(np.prod(table.dims)) >= min_elements
            and len(_consumers(graph, table.name)) == 1
        )
        if table is None or not eligible:
            new_nodes.append(node)
            continue
        q, scale = per_row_int8(numpy_helper.to_array(table))
        base = node.name
        q_name, scale_name = f"{table.name}_int8", f"{table.name}_row_scale"
        graph.initializer.remove(table)
        graph.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, scale_name)])
        ids, out = node.input[1], node.output[0]
        new_nodes += [
            helper.make_node("Gather", [q_name, ids], [f"{base}_q"], name=f"{base}_q", axis=0),
            helper.make_node("Cast", [f"{base}_q"], [f"{base}_f"], name=f"{base}_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [scale_name, ids], [f"{base}_s"], name=f"{base}_scale", axis=0),
            helper.make_node("Mul", [f"{base}_f", f"{base}_s"], [out], name=f"{base}_dequant"),
        ]
        rewritten.append(node.name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return rewritten


def store_float_weights_fp16(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """Store the fp32 weights of ``nodes`` as fp16 behind a Cast back to fp32, in place.

    The file shrinks by half for those weights while the arithmetic stays fp32: ONNX Runtime folds
    the Cast of a constant when the session loads. Returns the initializers converted.
    """
    graph = model.graph
    wanted = set(nodes)
    initializers = {init.name: init for init in graph.initializer}
    converted: list[str] = []
    casts: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in wanted:
            continue
        for name in node.input:
            init = initializers.get(name)
            if init is None or init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < 1024:
                continue
            if len(_consumers(graph, name)) != 1:
                continue
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16")
            graph.initializer.remove(init)
            graph.initializer.append(half)
            casts.append(
                helper.make_node("Cast", [half.name], [name], name=f"{name}_to_fp32", to=onnx.TensorProto.FLOAT)
            )
            converted.append(name)
    # Casts go first so the graph stays topologically sorted
    nodes_sorted = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes_sorted)
    return converted


# ---------------------------------------------------------------- one recipe for int8 models


@dataclass(frozen=True)
class Int8Recipe:
    """How an int8 model is built; ``build_int8`` applies it with a given set of float nodes.

    ``embeddings``: ``"per_row"`` (our pass), ``"per_tensor"`` (ORT's Gather quantization) or
    ``"float"``. ``float_weights``: storage of weights of nodes kept in float, ``"fp32"`` or
    ``"fp16"`` (half the bytes; fp32 arithmetic after ORT folds the Cast).
    """

    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    reduce_range: bool = REDUCE_RANGE
    embeddings: Literal["per_row", "per_tensor", "float"] = "per_row"
    float_weights: Literal["fp32", "fp16"] = "fp32"
    calibrate_method: str = "minmax"
    op_types: tuple[str, ...] = WEIGHT_OP_TYPES

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "embeddings": self.embeddings,
            "float_weights": self.float_weights,
            "calibrate_method": self.calibrate_method if self.mode == "static" else None,
            "op_types": list(self.op_types),
        }


def build_int8(
    src: ModelSource,
    dst: str | Path,
    recipe: Int8Recipe,
    *,
    float_nodes: Iterable[str] = (),
    calibration: ArrayCalibrationReader | Iterable[Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """An int8 model of ``src`` by ``recipe``, with ``float_nodes`` left unquantized.

    ``src`` should already be pre-processed (``preprocess``) when this is called many times, as
    the sensitivity search does: node names then match, and the work is not repeated.
    """
    float_nodes = list(float_nodes)
    op_types = list(recipe.op_types)
    if recipe.embeddings == "per_tensor":
        op_types.append("Gather")
    dst = Path(dst)
    with _scratch() as scratch:
        quantized = scratch / "int8.onnx"
        if recipe.mode == "dynamic":
            quantize_dynamic_int8(
                src,
                quantized,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                exclude_nodes=float_nodes,
                op_types=op_types,
                run_preprocess=False,
            )
        else:
            if calibration is None:
                raise QuantizationError("static int8 needs calibration data")
            quantize_static_int8(
                src,
                quantized,
                calibration,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                exclude_nodes=float_nodes,
                op_types=op_types,
                calibrate_method=recipe.calibrate_method,
                run_preprocess=False,
            )
        model = onnx.load(str(quantized))
        if recipe.embeddings == "per_row":
            quantize_embedding_tables(model, exclude_nodes=float_nodes)
        if recipe.float_weights == "fp16" and float_nodes:
            store_float_weights_fp16(model, float_nodes)
        onnx.save(model, str(dst))
    return dst
