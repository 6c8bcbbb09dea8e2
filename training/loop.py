"""The training loop every strategy shares: load the data, build this process's part of
the model, take the planned steps (resuming from a checkpoint when asked), report
progress, write checkpoints, evaluate each epoch, and at the end have rank 0 export the
model (ONNX with a parity check, safetensors) and draw the curves.

The evaluation at each epoch's end runs where the model is: with DDP every process evaluates
its share of the validation rows on its live replica and the sums are pooled (no copy, no idle
rank); the other strategies gather a full copy on rank 0, which evaluates it alone.

Reports go through ``emit`` as the JSON objects ``training.run`` prints (``progress``,
``checkpoint``, ``result``); rank 0 emits, the other ranks stay silent. Failures the run
can name raise ``TrainingFailure(code, message)``.

A run asked to stop (``RunPaths.stop_file`` appears on any rank: its worker is shutting down)
checkpoints at the next step where the ranks sync, and raises ``Preempted``; the ranks agree
on that step because the request travels in the same all-reduce as the loss counters.

Checkpoints are due once ``checkpoint_every_steps`` steps and ``checkpoint_every_seconds``
(rank 0's clock, shared in that all-reduce) have passed since the last one, at the last step
and on preemption. The step only snapshots state; ``BackgroundCheckpointer`` writes it, and
rank 0 announces the ``checkpoint`` line once it is whole. The optimisation options (the
learning-rate schedule, early stopping with the best weights kept) live here; accumulation,
clipping and autocast in the strategies' ``train_step``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from training import strategies
from training.checkpoint import BackgroundCheckpointer, checkpoint_dir, load_best, load_checkpoint, snapshot
from training.data import Splits, load_splits, shard_batches, steps_per_epoch
from training.dist import DistContext, sum_across_ranks
from training.schedule import lr_factor
from training.spec import EarlyStoppingSpec, TrainingSpec, total_steps
from training.zoo import build_any

Emit = Callable[[dict[str, Any]], None]

MAX_ONNX_ABS_DIFF = 1e-4
PARITY_ROWS = 512
ARTIFACTS = {"model": "model.onnx", "curves": "curves.png", "state_dict": "model.safetensors"}


class Preempted(Exception):
    """The run stopped early when asked to, after checkpointing step ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} when asked to, after a checkpoint")
        self.step = step


class TrainingFailure(Exception):
    """A failure with a code the supervisor understands (``nan_loss``, ``onnx_parity``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunPaths:
    out: Path
    data: Path | None = None
    val_data: Path | None = None
    resume: Path | None = None
    stop_file: Path | None = None  # its appearance asks the run to checkpoint and stop
    init_from: Path | None = None  # a safetensors state dict to start from (the spec's init_from)

    def stop_requested(self) -> bool:
        return self.stop_file is not None and self.stop_file.exists()


# --- the plan: which steps do what (pure) ------------------------------------------------------


@dataclass(frozen=True)
class StepSchedule:
    """Which steps of a run report, checkpoint and end an epoch."""

    steps_per_epoch: int
    total_steps: int
    report_every: int
    checkpoint_every: int
    checkpoint_seconds: float = 0.0

    def epoch_ends(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def report_due(self, step: int) -> bool:
        return step % self.report_every == 0 or step == self.total_steps or self.epoch_ends(step)

    def checkpoint_candidate(self, step: int) -> bool:
        """A step on the step cadence (whether it checkpoints also depends on the clock)."""
        return step % self.checkpoint_every == 0 or step == self.total_steps

    def checkpoint_due(self, step: int, last_checkpoint: int, seconds_since: float) -> bool:
        """Whether ``step`` checkpoints: the last step does; otherwise both the steps and the
        seconds since the last checkpoint must have come (whichever comes later)."""
        if step == self.total_steps:
            return True
        return step - last_checkpoint >= self.checkpoint_every and seconds_since >= self.checkpoint_seconds

    def sync_due(self, step: int) -> bool:
        """Whether the ranks pool their loss counters after ``step`` (all ranks agree)."""
        return self.report_due(step) or self.checkpoint_candidate(step)


def make_schedule(train_rows: int, spec: TrainingSpec, report_every: int | None = None) -> StepSchedule:
    hp = spec.hyperparameters
    per_epoch = steps_per_epoch(train_rows, hp.batch_size)
    total = total_steps(train_rows, hp)
    every = report_every or min(50, max(5, total // 50))  # about 50 reports a run, 5 to 50 steps apart
    return StepSchedule(per_epoch, total, every, spec.checkpoint_every_steps, spec.checkpoint_every_seconds)


def improved(value: float, best: float | None, stopping: EarlyStoppingSpec) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the metric's direction."""
    if best is None:
        return True
    return value < best - stopping.min_delta if stopping.mode == "min" else value > best + stopping.min_delta


# --- the loop's own state, saved in checkpoints ------------------------------------------------


@dataclass
class Progress:
    """Counters are global sums ``[loss_sum, correct, count]`` over all ranks."""

    step: int = 0
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    window_seconds: float = 0.0
    epoch: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    last_epoch: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: float = 0.0
    seconds: float = 0.0
    last_checkpoint: int = 0  # the step of the latest checkpoint
    best: dict[str, Any] = field(default_factory=dict)  # early stopping: {"value", "step", "waited"}

    def add(self, totals: list[float], seconds: float) -> None:
        self.window = [a + b for a, b in zip(self.window, totals, strict=True)]
        self.epoch = [a + b for a, b in zip(self.epoch, totals, strict=True)]
        self.window_seconds += seconds
        self.samples += totals[2]
        self.seconds += seconds

    def to_meta(self, world_size: int) -> dict[str, Any]:
        return {**asdict(self), "world_size": world_size}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        return cls(**{name: meta[name] for name in cls.__dataclass_fields__ if name in meta})


def _mean(counters: list[float], regression: bool) -> dict[str, float]:
    """The mean loss and the second metric of pooled ``[loss_sum, correct, count]`` counters:
    accuracy, or a regression head's mean absolute error (its middle counter sums errors)."""
    loss_sum, second, count = counters
    return {"loss": loss_sum / count, ("mae" if regression else "accuracy"): second / count}


# --- running -----------------------------------------------------------------------------------


def train(
    spec: TrainingSpec,
    paths: RunPaths,
    ctx: DistContext,
    emit: Emit,
    report_every: int | None = None,
    splits: Splits | None = None,
) -> None:
    """Run the whole job on this process (every rank calls it; the group is set up).
    ``splits``: the data when a launcher loaded it once for every rank."""
    if spec.strategy.world_size != ctx.world_size:
        raise TrainingFailure(
            "bad_launch",
            f"the spec asks for {spec.strategy.world_size} processes (nproc_per_node x nnodes) "
            f"but {ctx.world_size} were started",
        )
    if spec.hyperparameters.precision == "fp16" and ctx.device.type != "cuda":
        raise TrainingFailure("bad_spec", "fp16 autocast needs a CUDA device and this process has none")
    if splits is None:
        splits = load_splits(spec, paths.data, paths.val_data)
    torch.manual_seed(spec.hyperparameters.seed)
    # a text encoder is no nn.Sequential, but it trains with ddp only (a spec rule), which takes any module
    factory = cast(
        strategies.base.ModelFactory,
        functools.partial(build_any, spec.model, splits.num_features, len(splits.classes), paths.init_from),
    )
    trainable = strategies.prepare(factory, ctx, spec)
    plan = make_schedule(len(splits.train_y), spec, report_every)
    say = emit if ctx.is_rank0 else _silent
    checkpointer = BackgroundCheckpointer(ctx, functools.partial(_announce, say))
    job = Job(spec, plan, trainable, splits, paths.out, ctx, say, checkpointer, paths.stop_requested)
    progress = Progress()
    if paths.resume is not None:
        progress = Progress.from_meta(load_checkpoint(paths.resume, trainable, ctx))
        if ctx.is_rank0:
            job.best_weights = load_best(paths.resume)
    try:
        job.run_steps(progress)
        model = trainable.full_model_on_rank0()
        result = job.finish(model, progress) if model is not None else None
    finally:
        checkpointer.wait()  # the last checkpoint's write overlaps the export
    if result is not None:
        job.say(result)  # the last line: every checkpoint was announced before it


def _announce(say: Emit, directory: Path, meta: dict[str, Any]) -> None:
    """Rank 0's ``checkpoint`` line, once the checkpoint is whole on disk."""
    say({"type": "checkpoint", "path": str(directory), "step": meta["step"], **_latest_validation(meta["history"])})


def _silent(_: dict[str, Any]) -> None:
    pass


@dataclass
class Job:
    """What one process's run works with; ``say`` is silent except on rank 0."""

    spec: TrainingSpec
    plan: StepSchedule
    trainable: strategies.Trainable
    splits: Splits
    out: Path
    ctx: DistContext
    say: Emit
    checkpointer: BackgroundCheckpointer
    stop_requested: Callable[[], bool] = lambda: False
    # rank 0: the early-stopping best weights (a CPU state dict); replaced, never mutated
    best_weights: dict[str, torch.Tensor] | None = field(default=None, compare=False)
    # where this process's time went (unix times and seconds): the result's ``timings``
    timings: dict[str, float] = field(
        default_factory=lambda: {"checkpoint_s": 0.0, "checkpoints": 0, "validation_s": 0.0, "validations": 0}
    )

    def run_steps(self, progress: Progress) -> None:
        """Take the planned steps from ``progress.step`` on; raise ``Preempted`` when asked to stop."""
        hp, device = self.spec.hyperparameters, self.ctx.device
        x, y = self.splits.train_x.to(device), self.splits.train_y.to(device)
        # loss sum, correct, count; whether any rank must stop; whether rank 0's clock says a checkpoint is due
        pending = torch.zeros(5, device=device)
        counters = pending[:3]  # each step adds its loss sum, correct and count here, in place
        epoch_rows: torch.Tensor | None = None
        rows_epoch = -1
        started = last_checkpoint_at = time.perf_counter()
        schedule = hp.lr_schedule
        while progress.step < self.plan.total_steps:
            epoch, index = divmod(progress.step, self.plan.steps_per_epoch)
            if epoch_rows is None or epoch != rows_epoch:
                replicas, rank = self.trainable.data_replicas, self.trainable.data_rank
                epoch_rows = torch.from_numpy(shard_batches(len(y), hp.batch_size, replicas, rank, hp.seed, epoch))
                epoch_rows, rows_epoch = epoch_rows.to(device), epoch
            rows = epoch_rows[index]
            if schedule is not None:
                for group in self.trainable.optimizer.param_groups:
                    group["lr"] = hp.lr * lr_factor(progress.step + 1, self.plan.total_steps, schedule)
            self.timings.setdefault("first_step_at", time.time())
            self.trainable.train_step(x[rows], y[rows], counters)
            progress.step += 1
            if not self.plan.sync_due(progress.step):
                continue
            pending[3] = float(self.stop_requested())
            pending[4] = float(
                self.ctx.is_rank0 and time.perf_counter() - last_checkpoint_at >= self.plan.checkpoint_seconds
            )
            *totals, stopping, clock_due = sum_across_ranks(pending).tolist()
            progress.add(totals, time.perf_counter() - started)
            pending.zero_()
            _check_finite(progress)
            stopped_early = self.after_sync(progress)
            due = self.plan.checkpoint_due(progress.step, progress.last_checkpoint, math.inf if clock_due else 0.0)
            preempted = bool(stopping) and progress.step < self.plan.total_steps
            if due or stopped_early or preempted:
                self.save_checkpoint(progress)
                last_checkpoint_at = time.perf_counter()
            self.timings["last_step_at"] = time.time()
            if preempted:
                self.checkpointer.wait()  # the stop's checkpoint must be whole before the process ends
                raise Preempted(progress.step)
            if stopped_early:
                return
            started = time.perf_counter()  # evaluation and checkpoint time is not training time

    def after_sync(self, progress: Progress) -> bool:
        """Evaluate at an epoch's end and report, whichever ``progress.step`` calls for;
        whether early stopping ends the run here (every rank gets the same answer)."""
        step = progress.step
        evaluating = self.plan.epoch_ends(step) or step == self.plan.total_steps
        validation = {}
        if evaluating:
            began = time.perf_counter()
            validation = self.end_epoch(progress)
            self.timings["validation_s"] += time.perf_counter() - began  # what the steps waited for
            self.timings["validations"] += 1
        if self.plan.report_due(step):
            self.report(progress, validation)
        stopping = self.spec.hyperparameters.early_stopping
        if stopping is None or not evaluating or step == self.plan.total_steps:
            return False
        patience_spent = float(self.ctx.is_rank0 and progress.best.get("waited", 0) >= stopping.patience)
        return bool(sum_across_ranks(torch.tensor([patience_spent], device=self.ctx.device)).item())

    def save_checkpoint(self, progress: Progress) -> None:
        """Snapshot this step's state (collective) for the background writer; rank 0 says
        ``checkpoint`` once it is written."""
        began = time.perf_counter()
        progress.last_checkpoint = progress.step
        directory, meta = checkpoint_dir(self.out, progress.step), progress.to_meta(self.ctx.world_size)
        self.checkpointer.submit(snapshot(directory, self.trainable, meta, self.ctx, best=self.best_weights))
        self.timings["checkpoint_s"] += time.perf_counter() - began  # what the steps waited for
        self.timings["checkpoints"] += 1

    def end_epoch(self, progress: Progress) -> dict[str, float]:
        """Close the epoch's training counters and evaluate (collective); the validation
        metrics on rank 0, {} elsewhere. With early stopping, rank 0 keeps the best weights."""
        progress.last_epoch = _mean(progress.epoch, self.splits.regression)
        progress.epoch = [0.0, 0.0, 0.0]
        val_x, val_y = self.splits.val_x, self.splits.val_y
        replica = self.trainable.replica_for_evaluation()
        if replica is not None:  # every process evaluates a share, no copy made
            measured = evaluate_shared(replica, val_x, val_y, self.ctx)
            model = replica if self.ctx.is_rank0 else None
        else:
            model = self.trainable.full_model_on_rank0()
            measured = evaluate(model, val_x, val_y) if model is not None else {}
        if model is None:
            return {}
        epoch = progress.step / self.plan.steps_per_epoch
        progress.history.append({"kind": "val", "step": progress.step, "epoch": epoch, **measured})
        validation = {f"val_{name}": value for name, value in measured.items()}
        if (stopping := self.spec.hyperparameters.early_stopping) is not None:
            value = validation[stopping.metric]
            if improved(value, progress.best.get("value"), stopping):
                progress.best = {"value": value, "step": progress.step, "waited": 0}
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                progress.best["waited"] = progress.best.get("waited", 0) + 1
        return validation

    def report(self, progress: Progress, validation: dict[str, float]) -> None:
        means = _mean(progress.window, self.splits.regression)
        epoch = progress.step / self.plan.steps_per_epoch
        samples_per_s = progress.window[2] / progress.window_seconds if progress.window_seconds else 0.0
        progress.history.append({"kind": "train", "step": progress.step, "epoch": epoch, **means})
        progress.window, progress.window_seconds = [0.0, 0.0, 0.0], 0.0
        self.say(
            {
                "type": "progress",
                "step": progress.step,
                "total_steps": self.plan.total_steps,
                "epoch": round(epoch, 4),
                **means,
                "samples_per_s": round(samples_per_s, 1),
                **validation,
            }
        )

    def finish(self, model: nn.Module, progress: Progress) -> dict[str, Any]:
        """Rank 0's last act: evaluate, export, check parity, save, draw; the result object."""
        began = time.perf_counter()
        # imported here: only rank 0 needs matplotlib and ONNX, and they are slow to import
        from training.curves import draw_curves
        from training.export import (
            INPUT_NAME,
            OUTPUT_NAME,
            VALUE_OUTPUT,
            export_onnx,
            onnx_max_abs_diff,
            save_state_dict,
        )

        splits, spec = self.splits, self.spec
        if spec.hyperparameters.early_stopping is not None and self.best_weights is not None:
            model.load_state_dict(self.best_weights)  # the export is the best evaluation's weights
        measured = evaluate(model, splits.val_x, splits.val_y)
        self.out.mkdir(parents=True, exist_ok=True)
        files = {name: self.out / filename for name, filename in ARTIFACTS.items()}
        export_onnx(model, splits.num_features, files["model"], classes=splits.classes)
        diff = onnx_max_abs_diff(model, files["model"], splits.val_x[:PARITY_ROWS])
        if not diff <= MAX_ONNX_ABS_DIFF:
            raise TrainingFailure(
                "onnx_parity", f"ONNX Runtime's outputs differ from torch's by {diff:.3g} (max {MAX_ONNX_ABS_DIFF})"
            )
        save_state_dict(model, files["state_dict"], {"arch": spec.model.arch, "num_features": str(splits.num_features)})
        draw_curves(progress.history, files["curves"], title=f"{spec.model.arch} · {spec.strategy.kind}")
        last = progress.last_epoch or _mean(progress.epoch, splits.regression)
        output = (
            {"name": VALUE_OUTPUT, "shape": [None]}
            if splits.regression
            else {"name": OUTPUT_NAME, "shape": [None, len(splits.classes)]}
        )
        return {
            "type": "result",
            "metrics": {
                **{f"train_{name}": value for name, value in last.items()},
                **{f"val_{name}": value for name, value in measured.items()},
                "onnx_max_abs_diff": diff,
                "steps": progress.step,
                "epochs": round(progress.step / self.plan.steps_per_epoch, 4),
                "samples_per_s": round(progress.samples / progress.seconds, 1) if progress.seconds else 0.0,
                "parameters": sum(p.numel() for p in model.parameters()),
                **({"best_step": progress.best["step"]} if progress.best else {}),
            },
            "files": {name: str(path) for name, path in files.items()},
            "classes": splits.classes,
            "input": {
                "name": INPUT_NAME,
                "shape": [None, splits.num_features],
                "feature_shape": list(splits.feature_shape),
            },
            "output": output,
            "timings": {**self.timings, "export_s": round(time.perf_counter() - began, 3)},
        }


def _latest_validation(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of the latest validation (what a checkpoint is ranked by); {} before the first."""
    for entry in reversed(history):
        if entry["kind"] == "val":
            metrics = {f"val_{name}": value for name, value in entry.items() if name not in ("kind", "step", "epoch")}
            return {**metrics, "val_step": entry["step"]}
    return {}


def _check_finite(progress: Progress) -> None:
    if not math.isfinite(progress.window[0]):
        raise TrainingFailure(
            "nan_loss",
            f"the training loss became {progress.window[0]} by step {progress.step}; "
            "lower the learning rate or check the data",
        )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy"}`` of ``model`` on ``x``, ``y``; for float
    targets (a regression head) ``{"loss": mean squared error, "mae", "rmse", "r2"}``."""
    return metrics_from_sums(validation_sums(model, x, y).tolist(), y.is_floating_point())


def evaluate_shared(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DistContext) -> dict[str, float]:
    """What :func:`evaluate` gives, with the rows split over the processes (collective): each
    evaluates every world-th row with its own whole ``model``, and the sums are pooled."""
    mine = slice(ctx.rank, None, ctx.world_size)
    sums = validation_sums(model, x[mine].to(ctx.device), y[mine].to(ctx.device))
    return metrics_from_sums(sum_across_ranks(sums).tolist(), y.is_floating_point())


def validation_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """float64 ``[loss_sum, correct, count, 0, 0]`` of ``model`` on ``x``, ``y``; for float
    targets ``[squared_error_sum, absolute_error_sum, count, target_sum, target_square_sum]``.
    The model's train/eval flags are as before afterwards (it may be the one being trained)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            outputs = [model(x[start : start + batch_size]).float() for start in range(0, len(y), batch_size)]
    finally:
        for module, training in modes:
            module.training = training
    if not outputs:
        return torch.zeros(5, dtype=torch.float64, device=y.device)
    out = torch.cat(outputs).double()
    if y.is_floating_point():
        return regression_sums(out.reshape(y.shape), y)
    loss_sum = F.cross_entropy(out, y, reduction="sum")
    correct = (out.argmax(dim=1) == y).sum().double()
    count = torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)
    zero = torch.zeros((), dtype=torch.float64, device=y.device)
    return torch.stack([loss_sum, correct, count, zero, zero])


def regression_sums(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    error = predicted.double() - target.double()
    target = target.double()
    count = torch.tensor(float(target.numel()), dtype=torch.float64, device=target.device)
    return torch.stack([error.pow(2).sum(), error.abs().sum(), count, target.sum(), target.pow(2).sum()])


def metrics_from_sums(sums: list[float], regression: bool) -> dict[str, float]:
    """The metrics of pooled :func:`validation_sums`."""
    first, second, count, target_sum, target_squares = sums
    if not regression:
        return {"loss": first / count, "accuracy": second / count}
    mse = first / count
    # the targets' total sum of squares; 0 (no variation, R² 0) up to rounding
    total = target_squares - target_sum * target_sum / count
    r2 = 1.0 - first / total if total > 1e-12 * max(target_squares, 1.0) else 0.0
    return {"loss": mse, "mae": second / count, "rmse": math.sqrt(mse), "r2": r2}


def regression_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE (the loss), MAE, RMSE and R² (1 - residual / total sum of squares; 0 when the
    targets do not vary)."""
    return metrics_from_sums(regression_sums(predicted, target).tolist(), regression=True)
