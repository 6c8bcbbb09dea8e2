"""A compression run: the passes in order, each measured and held to the accuracy floor, then
the speed of every stage and the report. Shared by the worker and the CLI.

Owns: evaluating a stage (on the eval rows when there are labels: a classifier's accuracy, a
regression model's MAE, RMSE and R²; and always output fidelity against the source's outputs),
the accuracy-floor rule (``floor_breach``, pure: accuracy, a regression model's MAE, or the
mean cosine without labels),
running the passes with their data and the caller's hooks (progress, cancellation, the progress
after each pass for the caller to save), resuming after the passes a saved ``Progress`` did
(``compression.resume``), and measuring speed once at the end, stage after stage under the same
thread settings. Knows nothing of jobs, HTTP or storage: the caller hands in the source state
and the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compression.data import Inputs, PipelineData, select_rows
from compression.distill import DistillError
from compression.fidelity import (
    Fidelity,
    RegressionErrors,
    accuracy,
    compare_outputs,
    compare_values,
    make_session,
    regression_errors,
)
from compression.measure import file_size, measure_speed, onnx_outputs
from compression.passes import ExportParityError, ModelState, Pass, PassContext, PassError, fit_to_inputs, make_pass
from compression.prune import PruneError
from compression.quantize import CalibrationMismatch, QuantizationError
from compression.report import Stage, build_report, stage_row
from compression.resume import Progress
from compression.spec import AccuracyFloor, MeasurementSpec, PassSpec, Task
from core.spec_kit import FieldError

PASS_ERRORS = (PassError, PruneError, DistillError, QuantizationError, ExportParityError)


def _nothing(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """The caller's view of a run. ``on_batch`` is called before every training step and
    between passes: raise from it to stop the run."""

    pass_started: Callable[[int, int, str], None] = _nothing  # index, total, kind
    pass_finished: Callable[[int, int, dict[str, Any]], None] = _nothing  # index, total, report row
    on_batch: Callable[[], None] = _nothing
    on_epoch: Callable[[int, int, int, float], None] = _nothing  # pass index, epoch, epochs, loss
    log: Callable[[str], None] = _nothing
    pass_saved: Callable[[Progress], None] = _nothing  # after ``pass_finished``: the run so far


@dataclass(frozen=True)
class Quality:
    """What a stage's outputs on the eval rows are worth: against the labels (a classifier's
    accuracy or a regression model's errors; neither without labels) and against the source."""

    accuracy: float | None
    errors: RegressionErrors | None
    fidelity: Fidelity


LOWER_IS_BETTER = frozenset({"mae"})


@dataclass(frozen=True)
class Breach:
    """A stage below the accuracy floor (for an error such as ``mae``: above its ceiling)."""

    metric: str  # "accuracy", "mae" or "mean_cosine"
    value: float
    floor: float
    source_value: float

    def message(self, stage: str) -> str:
        side = "above the ceiling" if self.metric in LOWER_IS_BETTER else "below the floor"
        return (
            f"after {stage} the {self.metric.replace('_', ' ')} is {self.value:.4f}, {side} "
            f"{self.floor:.4f} (the source's is {self.source_value:.4f})"
        )


class AccuracyFloorBreached(Exception):
    """A pass took the model below the floor; ``stages`` are the report rows measured so far."""

    def __init__(self, index: int, stage: str, breach: Breach, stages: list[dict[str, Any]]) -> None:
        super().__init__(breach.message(stage))
        self.index, self.stage, self.breach, self.stages = index, stage, breach, stages


def floor_breach(floor: AccuracyFloor, source: Quality, current: Quality) -> Breach | None:
    """Whether ``current`` is below the floor that ``source`` sets: accuracy, or a regression
    model's MAE, when there are labels; mean cosine to the source otherwise."""
    if source.errors is not None and current.errors is not None:
        ceiling = floor.mae_ceiling(source.errors.mae)
        if ceiling is not None and current.errors.mae > ceiling:
            return Breach("mae", current.errors.mae, ceiling, source.errors.mae)
        return None
    if source.accuracy is not None and current.accuracy is not None:
        limit = floor.accuracy_floor(source.accuracy)
        if limit is not None and current.accuracy < limit:
            return Breach("accuracy", current.accuracy, limit, source.accuracy)
        return None
    limit = floor.min_mean_cosine
    if limit is not None and current.fidelity.mean_cosine < limit:
        return Breach("mean_cosine", current.fidelity.mean_cosine, limit, 1.0)
    return None


class PassFailed(Exception):
    """A pass that could not run as its options say; ``pointer`` is into the spec."""

    def __init__(self, index: int, kind: str, code: str, option: str, detail: str) -> None:
        super().__init__(f"pass {index} ({kind}): {detail}")
        self.index, self.kind, self.code, self.option, self.detail = index, kind, code, option, detail

    @property
    def pointer(self) -> str:
        """Where in the spec: ``option`` is a pointer into the pass (``/amount``)."""
        return f"/passes/{self.index}{self.option}"


def _failure(index: int, kind: str, exc: Exception) -> PassFailed:
    """What went wrong in a pass, as a code and the option at fault."""
    if isinstance(exc, CalibrationMismatch):
        return PassFailed(index, kind, "bad_calibration", "/calibration", str(exc))
    if isinstance(exc, FieldError):
        return PassFailed(index, kind, "bad_spec", exc.pointer, exc.detail)
    code = "onnx_parity" if isinstance(exc, ExportParityError) else "bad_spec"
    return PassFailed(index, kind, code, "/kind", str(exc))


@dataclass
class PipelineResult:
    final: ModelState
    stages: list[Stage]
    report: dict[str, Any]
    stage_files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Evaluator:
    """The quality of a stage's ONNX model on the eval rows, as its task measures it."""

    x: Inputs
    y: np.ndarray | None
    reference: np.ndarray
    threads: int
    task: Task

    def __call__(self, path: Path) -> Quality:
        outputs = onnx_outputs(make_session(path, intra_op_threads=self.threads), fit_to_inputs(path, self.x))
        if self.task == "regression":
            errors = None if self.y is None else regression_errors(outputs, self.y)
            return Quality(None, errors, compare_values(self.reference, outputs))
        measured = None if self.y is None else accuracy(outputs, self.y)
        return Quality(measured, None, compare_outputs(self.reference, outputs))


def _stage(name: str, kind: str, state: ModelState, quality: Quality, **extra: Any) -> Stage:
    size = file_size(state.onnx_path)
    return Stage(name, kind, state.parameters, size, quality.accuracy, quality.fidelity, errors=quality.errors, **extra)


def run(
    source: ModelState,
    passes: Sequence[PassSpec | Pass],
    data: PipelineData,
    workdir: Path,
    *,
    floor: AccuracyFloor | None = None,
    measurement: MeasurementSpec | None = None,
    hooks: Hooks | None = None,
    meta: dict[str, Any] | None = None,
    resume: Progress | None = None,
) -> PipelineResult:
    """Run ``passes`` on ``source`` and measure every stage; raises ``AccuracyFloorBreached``
    and ``PassFailed``. With ``resume`` (saved by an earlier run of the same passes on the same
    source and data) the passes it did are skipped and the run goes on from its state."""
    hooks, floor, measurement = hooks or Hooks(), floor or AccuracyFloor(), measurement or MeasurementSpec()
    workdir.mkdir(parents=True, exist_ok=True)
    runners = [p if isinstance(p, Pass) else make_pass(p) for p in passes]
    session = make_session(source.onnx_path, intra_op_threads=measurement.threads)
    reference = onnx_outputs(session, fit_to_inputs(source.onnx_path, data.eval_x))
    evaluate = _Evaluator(data.eval_x, data.eval_y, reference, measurement.threads, data.task)
    source_quality = evaluate(source.onnx_path)
    stages = [_stage("source", "source", source, source_quality)]
    files = [source.onnx_path]
    state = source
    if resume is not None:
        stages, files, state = list(resume.stages), list(resume.files), resume.state
    for index, runner in enumerate(runners):
        if resume is not None and index < resume.done:
            continue
        hooks.on_batch()
        hooks.pass_started(index, len(runners), runner.kind)
        name = f"{index + 1}. {runner.kind}"
        try:
            outcome = runner.run(state, _context(index, runner, data, workdir, measurement, hooks))
        except PASS_ERRORS as exc:
            raise _failure(index, runner.kind, exc) from exc
        state = outcome.state
        quality = evaluate(state.onnx_path)
        extra = {"options": runner.describe(), "details": outcome.details, "seconds": outcome.seconds}
        stage = _stage(name, runner.kind, state, quality, **extra)
        stages.append(stage)
        files.append(state.onnx_path)
        breach = floor_breach(floor, source_quality, quality)
        if breach is not None:
            raise AccuracyFloorBreached(index, name, breach, [stage_row(s) for s in stages])
        hooks.pass_finished(index, len(runners), stage_row(stage))
        hooks.pass_saved(Progress(index + 1, list(stages), list(files), state))
    hooks.on_batch()
    if measurement.speed:
        stages = _with_speed(stages, files, data.eval_x, measurement, hooks)
    report = build_report(stages, {**(meta or {}), "notes": data.notes, "measurement": measurement.model_dump()})
    return PipelineResult(state, stages, report, files)


def _context(
    index: int, runner: Pass, data: PipelineData, workdir: Path, measurement: MeasurementSpec, hooks: Hooks
) -> PassContext:
    return PassContext(
        workdir=workdir,
        name=f"pass{index + 1}-{runner.kind}",
        train_x=data.train_x,
        train_y=data.train_y,
        calibration=data.calibration.get(index),
        sample=data.eval_x,
        threads=measurement.threads,
        on_batch=hooks.on_batch,
        on_epoch=lambda epoch, epochs, loss: hooks.on_epoch(index, epoch, epochs, loss),
        log=hooks.log,
    )


def _with_speed(
    stages: list[Stage], files: list[Path], eval_x: Inputs, measurement: MeasurementSpec, hooks: Hooks
) -> list[Stage]:
    """Every stage timed one after the other, with the same threads and rows."""
    timed = []
    for stage, path in zip(stages, files, strict=True):
        hooks.on_batch()
        speed = measure_speed(
            path,
            fit_to_inputs(path, select_rows(eval_x, slice(0, measurement.throughput_batch))),
            threads=measurement.threads,
            warmup=measurement.warmup,
            latency_iterations=measurement.latency_iterations,
            throughput_iterations=measurement.throughput_iterations,
            throughput_batch=measurement.throughput_batch,
        )
        hooks.log(f"{stage.name}: p50 {speed.latency_p50_ms:.3f} ms, {speed.throughput_items_per_s:.0f} items/s")
        timed.append(replace(stage, speed=speed))
    return timed


def torch_threads(threads: int) -> None:
    """Torch's intra-op threads for the training in passes (the worker shares its machine)."""
    torch.set_num_threads(max(1, threads))
