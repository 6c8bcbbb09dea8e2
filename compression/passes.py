"""The passes of a compression run behind one interface: prune, distill, quantize.

Owns: ``ModelState`` (what a pass gets and gives back: the ONNX file always, and the torch
model with its zoo spec while one exists), the ``Pass`` interface (``run(state, ctx) ->
PassOutcome``), one pass per kind built from its typed options (``compression.spec``), and the
export of a torch state to ONNX with ``onnx.checker`` and a parity check. The math lives in
``compression.prune``, ``distill``, ``finetune`` and ``quantize``; this module strings it
together. A pass reports through ``PassContext`` (each mini-batch and each epoch), which is
where the caller checks for cancellation: training loops call ``on_batch`` before each step.

Example::

    state = ModelState.from_torch(model, zoo_spec, "work/source.onnx", sample_rows)
    outcome = make_pass(PruneSpec(kind="prune", amount=0.8)).run(state, ctx)
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeGuard

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from compression.data import Inputs
from compression.distill import (
    DistillOptions,
    build_student,
    check_labels,
    check_student_smaller,
    kd_loss,
    output_loss,
    teacher_outputs,
)
from compression.finetune import LossFn, TrainConfig, train, zero_masks
from compression.measure import ParameterCounts, onnx_parameter_counts, parameter_counts
from compression.prune import PruneOptions, plan_channels, prune_model, resized_spec, sparsity
from compression.quantize import (
    ArrayCalibrationReader,
    Dim,
    Int8Recipe,
    convert_fp16,
    model_input_specs,
    name_unnamed_nodes,
    node_names,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from compression.spec import DistillSpec, PassSpec, PruneSpec, QuantizeSpec, ZooSpec
from core.spec_kit import OptionError

MAX_PARITY_ABS_DIFF = 1e-4
PARITY_ROWS = 256


class PassError(OptionError):
    """A pass that cannot run on this state; ``field`` names its option at fault (or ``kind``)."""


class ExportParityError(RuntimeError):
    """The exported ONNX model computes something else than the torch model."""


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    """A model between passes. ``parameters`` are counted on the torch model while there is one
    (exact for pruned zeros); a quantized graph keeps the counts of the model it quantized."""

    onnx_path: Path
    parameters: ParameterCounts
    num_features: int | None
    torch_model: nn.Module | None = None
    zoo: ZooSpec | None = None

    @property
    def has_torch(self) -> bool:
        return self.torch_model is not None and self.zoo is not None

    @classmethod
    def from_torch(
        cls, model: nn.Module, zoo: ZooSpec, onnx_path: Path, sample: np.ndarray, *, export: bool = True
    ) -> ModelState:
        """The state of a zoo model; exported to ``onnx_path`` (with a parity check on ``sample``
        rows) unless ``export`` is off and the file is already its export."""
        model.eval()
        features = int(sample.shape[1])
        if export:
            export_checked(model, features, onnx_path, sample)
        return cls(onnx_path, parameter_counts(model), features, model, zoo)

    @classmethod
    def from_onnx(cls, onnx_path: Path) -> ModelState:
        specs = list(model_input_specs(onnx_path).values())
        features = None
        if len(specs) == 1 and len(specs[0].shape) >= 2 and _fixed_dims(dims := specs[0].shape[1:]):
            features = math.prod(dims)
        return cls(onnx_path, onnx_parameter_counts(onnx_path), features)


def export_checked(model: nn.Module, num_features: int, path: Path, sample: np.ndarray) -> float:
    """Export ``model`` to ``path`` (``onnx.checker`` included) and compare ONNX Runtime's outputs
    with torch's on up to ``PARITY_ROWS`` sample rows; returns the largest difference."""
    from training.export import export_onnx, onnx_max_abs_diff  # the exporter is slow to import

    export_onnx(model, num_features, path)
    rows = torch.from_numpy(np.ascontiguousarray(sample[:PARITY_ROWS], dtype=np.float32))
    diff = onnx_max_abs_diff(model, path, rows)
    if not diff <= MAX_PARITY_ABS_DIFF:
        raise ExportParityError(f"ONNX Runtime's outputs differ from torch's by {diff:.3g} (max {MAX_PARITY_ABS_DIFF})")
    return diff


# --- what a pass sees --------------------------------------------------------------------------


def _nothing(*_: Any) -> None:
    return None


@dataclass
class PassContext:
    """A pass's data and its line back to the caller. ``on_batch`` runs before every training
    step (raise from it to stop), ``on_epoch(epoch, epochs, mean_loss)`` after every epoch."""

    workdir: Path
    name: str = "pass"
    train_x: Inputs | None = None
    train_y: np.ndarray | None = None
    calibration: Inputs | None = None
    sample: Inputs | None = None  # rows the ONNX export is checked on
    threads: int = 1
    on_batch: Callable[[], None] = _nothing
    on_epoch: Callable[[int, int, float], None] = _nothing
    log: Callable[[str], None] = _nothing

    def rows(self, what: str, *, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training rows as tensors (and their labels, required when ``labels``)."""
        if self.train_x is None or (labels and self.train_y is None):
            raise PassError("kind", f"{what} needs {'labelled ' if labels else ''}training rows (a dataset)")
        if isinstance(self.train_x, dict):
            raise PassError("kind", f"{what} trains a zoo model on rows of X; these rows feed named inputs")
        y = None if self.train_y is None else torch.from_numpy(np.asarray(self.train_y, dtype=np.int64))
        return _tensor(self.train_x), y


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@dataclass(frozen=True)
class PassOutcome:
    state: ModelState
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Pass(ABC):
    """One step of a compression run: a new ``ModelState`` from the current one."""

    kind: ClassVar[str]
    needs_torch: ClassVar[bool]

    def __init__(self, options: PassSpec) -> None:
        self.options = options

    def describe(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json")

    def check(self, state: ModelState) -> None:
        """Raise ``PassError`` when this pass does not apply to ``state``."""
        if self.needs_torch and not state.has_torch:
            raise PassError("kind", f"{self.kind} needs a zoo model's weights; this model is an ONNX graph only")

    def run(self, state: ModelState, ctx: PassContext) -> PassOutcome:
        self.check(state)
        started = time.perf_counter()
        outcome = self.apply(state, ctx)
        return replace(outcome, seconds=time.perf_counter() - started)

    @abstractmethod
    def apply(self, state: ModelState, ctx: PassContext) -> PassOutcome: ...


class _Watched:
    """A loss function that reports every batch and, at each epoch's end, the epoch's mean loss."""

    def __init__(self, loss_fn: LossFn, rows: int, config: TrainConfig, ctx: PassContext) -> None:
        self.loss_fn, self.ctx, self.epochs = loss_fn, ctx, config.epochs
        self.per_epoch = max(1, math.ceil(rows / config.batch_size))
        self.seen, self.total = 0, 0.0

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.ctx.on_batch()
        loss = self.loss_fn(*args)
        self.seen += 1
        self.total += float(loss.detach())
        if self.seen % self.per_epoch == 0:
            self.ctx.on_epoch(self.seen // self.per_epoch, self.epochs, self.total / self.per_epoch)
            self.total = 0.0
        return loss


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    config: TrainConfig,
    ctx: PassContext,
    masks: dict[str, torch.Tensor] | None = None,
) -> list[float]:
    return train(model, x, targets, _Watched(loss_fn, len(x), config, ctx), config, masks=masks)


# --- prune -------------------------------------------------------------------------------------


class PrunePass(Pass):
    kind = "prune"
    needs_torch = True
    options: PruneSpec

    def apply(self, state: ModelState, ctx: PassContext) -> PassOutcome:
        o = self.options
        assert state.torch_model is not None and state.zoo is not None
        options = PruneOptions(o.amount, o.structured, o.scope, o.norm, o.fine_tune_epochs)
        details: dict[str, Any] = {}
        if o.structured:
            details["channels_kept"] = plan_channels(state.torch_model, o.amount, o.norm).sizes()
        pruned = prune_model(state.torch_model, options)
        zoo = resized_spec(state.zoo, pruned) if o.structured else state.zoo
        details["sparsity_after_pruning"] = sparsity(pruned)
        if o.fine_tune_epochs:
            x, y = ctx.rows("fine-tuning", labels=True)
            assert y is not None
            config = TrainConfig(epochs=o.fine_tune_epochs, lr=o.lr, batch_size=o.batch_size, seed=o.seed)
            # what unstructured pruning zeroed stays zero; structured pruning left no zeros to keep
            masks = {} if o.structured else zero_masks(pruned)
            details["fine_tune_losses"] = _fit(pruned, x, (y,), F.cross_entropy, config, ctx, masks)
        details["sparsity"] = sparsity(pruned)
        if o.structured:
            details["arch"] = zoo.model_dump(mode="json")
        return PassOutcome(_exported(pruned, zoo, state, ctx), details)


def _exported(model: nn.Module, zoo: ZooSpec, state: ModelState, ctx: PassContext) -> ModelState:
    if state.num_features is None:
        raise PassError("kind", "the model's number of input features is unknown")
    sample = next((rows for rows in (ctx.sample, ctx.train_x) if isinstance(rows, np.ndarray)), None)
    if sample is None:
        sample = np.zeros((4, state.num_features), np.float32)
    return ModelState.from_torch(model, zoo, ctx.workdir / f"{ctx.name}.onnx", sample)


# --- distill -----------------------------------------------------------------------------------


class DistillPass(Pass):
    kind = "distill"
    needs_torch = True
    options: DistillSpec

    def apply(self, state: ModelState, ctx: PassContext) -> PassOutcome:
        o = self.options
        teacher = state.torch_model
        assert teacher is not None
        options = DistillOptions(o.mode, o.temperature, o.alpha, o.epochs, o.lr, o.batch_size, o.seed)
        x, y = ctx.rows("distillation", labels=o.mode == "kd" and o.alpha < 1)
        check_labels(options, y is not None)
        targets = teacher_outputs(teacher, x)
        student = build_student(o.student, x.shape[1], targets.shape[1], o.seed)
        student_params, teacher_params = parameter_counts(student).total, parameter_counts(teacher).total
        check_student_smaller(student_params, teacher_params)
        config = TrainConfig(epochs=o.epochs, lr=o.lr, batch_size=o.batch_size, seed=o.seed)
        if o.mode == "kd":
            labels = (y,) if y is not None and o.alpha < 1 else ()
            loss_fn = _kd_loss(o.temperature, o.alpha)
            losses = _fit(student, x, (targets, *labels), loss_fn, config, ctx)
        else:
            mode = o.mode
            losses = _fit(student, x, (targets,), lambda out, t: output_loss(out, t, mode), config, ctx)
        details = {
            "student_parameters": student_params,
            "teacher_parameters": teacher_params,
            "student_fraction": student_params / teacher_params,
            "losses": losses,
        }
        return PassOutcome(_exported(student, o.student, state, ctx), details)


def _kd_loss(temperature: float, alpha: float) -> LossFn:
    def loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return kd_loss(student, teacher, labels, temperature, alpha)

    return loss


# --- quantize ----------------------------------------------------------------------------------


class QuantizePass(Pass):
    kind = "quantize"
    needs_torch = False
    options: QuantizeSpec

    def apply(self, state: ModelState, ctx: PassContext) -> PassOutcome:
        o = self.options
        src, dst = state.onnx_path, ctx.workdir / f"{ctx.name}.onnx"
        details: dict[str, Any] = {}
        ctx.on_batch()
        _check_nodes(src, o.exclude_nodes)
        if o.protect is not None:
            details["scheme"] = self._protected(src, dst, ctx)
        elif o.mode == "dynamic":
            quantize_dynamic_int8(
                src,
                dst,
                per_channel=o.per_channel,
                reduce_range=o.reduce_range,
                exclude_nodes=o.exclude_nodes,
                exclude_op_types=o.exclude_op_types,
            )
        elif o.mode == "static":
            quantize_static_int8(
                src,
                dst,
                ArrayCalibrationReader.from_arrays(self._feed(src, ctx), o.effective_calibration.batch_size),
                per_channel=o.per_channel,
                reduce_range=o.reduce_range,
                exclude_nodes=o.exclude_nodes,
                exclude_op_types=o.exclude_op_types,
                calibrate_method=o.effective_calibration.method,
            )
        else:
            convert_fp16(src, dst, exclude_op_types=o.exclude_op_types, exclude_nodes=o.exclude_nodes)
            # the fp16 converter appends the Casts around nodes it keeps fp32 after their readers
            onnx.save(topologically_sorted(onnx.load(str(dst))), str(dst))
        onnx.checker.check_model(str(dst))
        details["op_types"] = _op_counts(dst)
        # quantization stores the same parameters in fewer bits: the counts carry over
        return PassOutcome(ModelState(dst, state.parameters, state.num_features), details)

    def _feed(self, src: Path, ctx: PassContext) -> dict[str, np.ndarray]:
        if ctx.calibration is None:
            raise PassError("calibration", "this quantization needs calibration rows")
        return fit_to_inputs(src, ctx.calibration)

    def _protected(self, src: Path, dst: Path, ctx: PassContext) -> dict[str, Any]:
        from compression.sensitivity import DEFAULT_ALPHAS, FidelityTarget, int8_within_budget

        o, protect = self.options, self.options.protect
        assert protect is not None
        feed = self._feed(src, ctx)
        size = o.effective_calibration.batch_size
        rows = len(next(iter(feed.values())))
        batches = [{k: v[i : i + size] for k, v in feed.items()} for i in range(0, rows, size)]
        recipe = Int8Recipe(
            mode="dynamic" if o.mode == "dynamic" else "static",
            per_channel=o.per_channel,
            reduce_range=o.reduce_range,
            float_weights="fp16",
            calibrate_method=o.effective_calibration.method,
        )
        result = int8_within_budget(
            src,
            dst,
            batches,
            workdir=ctx.workdir / f"{ctx.name}-search",
            budget_ratio=protect.budget_ratio,
            target=FidelityTarget(mean_cosine=protect.mean_cosine, min_cosine=protect.min_cosine),
            recipe=recipe,
            alphas=DEFAULT_ALPHAS if protect.smoothing else (None,),
            intra_op_threads=ctx.threads,
            progress=ctx.log,
        )
        return result.as_dict()


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its top-level nodes reordered so that each comes after its inputs' producers
    (stable: nodes already in order keep it), as ``onnx.checker`` requires."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(name in ready for name in n.input)]
        if not runnable:
            raise PassError("kind", "the quantized graph has a cycle or an input nothing produces")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if not any(n is r for r in runnable)]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _check_nodes(model: Path, names: list[str]) -> None:
    """Node names to keep float that the graph lacks (names as the quantizer assigns them)."""
    missing = sorted(set(names) - set(node_names(name_unnamed_nodes(onnx.load(str(model))))))
    if missing:
        raise PassError("exclude_nodes", f"the model has no nodes {missing}")


def _fixed_dims(dims: tuple[Dim, ...]) -> TypeGuard[tuple[int, ...]]:
    """Whether every dim is a fixed size (none is a name or None)."""
    return all(isinstance(d, int) for d in dims)


def fit_to_inputs(model: Path, rows: Inputs) -> dict[str, np.ndarray]:
    """Flat rows shaped for the model's single input (``[batch, 64]`` or ``[batch, 1, 8, 8]``), or
    one array per named input as the dtype each takes."""
    specs = list(model_input_specs(model).values())
    if isinstance(rows, dict):
        missing = [spec.name for spec in specs if spec.name not in rows]
        if missing:
            raise PassError("calibration", f"no rows for the model's inputs {missing}; there are {sorted(rows)}")
        return {spec.name: np.ascontiguousarray(rows[spec.name], dtype=spec.dtype) for spec in specs}
    if len(specs) != 1:
        raise PassError("calibration", f"a model with {len(specs)} inputs cannot be fed rows of one array")
    spec = specs[0]
    rest = spec.shape[1:]
    if _fixed_dims(rest) and math.prod(rest) == rows.shape[1]:
        return {spec.name: rows.reshape(rows.shape[0], *rest).astype(spec.dtype)}
    raise PassError(
        "calibration", f"rows of {rows.shape[1]} values do not fit input {spec.name!r} of shape {list(spec.shape)}"
    )


def _op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


# --- choosing the pass -------------------------------------------------------------------------

PASSES: dict[str, type[Pass]] = {"prune": PrunePass, "distill": DistillPass, "quantize": QuantizePass}


def make_pass(options: PassSpec) -> Pass:
    return PASSES[options.kind](options)
