"""Knowledge distillation of a source model (the teacher) into a smaller zoo model (the student).

Owns: the distillation pass's options and their validation, the rule that a student must be
smaller than its teacher, the losses (soft targets at a temperature mixed with hard-label
cross entropy; for unlabeled data or encoders, MSE or cosine distance on the outputs) and the
pass itself. The teacher is a torch module, an ONNX file or an ONNX Runtime session returning
logits or embeddings; it runs once over the data, so an ONNX teacher costs one pass. The
student comes from ``training.zoo.build_model`` and is trained with ``compression.finetune``;
the same seed gives the same student.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from compression.finetune import TrainConfig, predict, train
from compression.measure import onnx_outputs, onnx_parameter_counts, parameter_counts
from core.spec_kit import OptionError
from training.spec import CNNSpec, MLPSpec, TransformerSpec
from training.zoo import build_model

Mode = Literal["kd", "mse", "cosine"]
Teacher: TypeAlias = nn.Module | ort.InferenceSession | str | Path
StudentSpec = MLPSpec | CNNSpec | TransformerSpec

MODES: tuple[Mode, ...] = ("kd", "mse", "cosine")


class DistillError(OptionError):
    """A distillation request that cannot be carried out; ``field`` names the pass option at
    fault (``student``, ``alpha``...), so the API can point at it."""


# --- options -----------------------------------------------------------------------------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DistillError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _whole(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DistillError(name, f"must be a whole number ≥ {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class DistillOptions:
    """``kd``: loss = alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE(student, labels),
    with ``_T`` the softmax at ``temperature``; ``mse``/``cosine``: the student's outputs are
    pulled towards the teacher's (no labels needed)."""

    mode: Mode = "kd"
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DistillError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not _number(self.temperature, "temperature") > 0:
            raise DistillError("temperature", f"must be > 0, got {self.temperature}")
        if not 0.0 <= _number(self.alpha, "alpha") <= 1.0:
            raise DistillError("alpha", f"must be between 0 and 1, got {self.alpha}")
        _whole(self.epochs, "epochs", 1)
        if not _number(self.lr, "lr") > 0:
            raise DistillError("lr", f"must be > 0, got {self.lr}")
        _whole(self.batch_size, "batch_size", 1)
        _whole(self.seed, "seed", 0)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> DistillOptions:
        """Options from a pass as the job spec writes it; ``kind`` and ``student`` (the zoo spec,
        built by the caller) are allowed and not read here."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known - {"kind", "student"})
        if unknown:
            raise DistillError(unknown[0], f"is not a distillation option; the options are {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in options.items() if k in known})


def check_student_smaller(student_params: int, teacher_params: int) -> None:
    """Refuse a student that is not smaller than its teacher (distilling would not compress)."""
    if student_params >= teacher_params:
        ratio = student_params / teacher_params if teacher_params else math.inf
        raise DistillError(
            "student",
            f"the student has {student_params} parameters, {ratio:.0%} of the teacher's {teacher_params}; "
            "it must have fewer",
        )


def check_labels(options: DistillOptions, has_labels: bool) -> None:
    if options.mode == "kd" and options.alpha < 1.0 and not has_labels:
        raise DistillError(
            "alpha",
            f"without labels only the teacher's soft targets can teach: use alpha 1 (got {options.alpha}), "
            "or mode 'mse' or 'cosine'",
        )


# --- losses (pure) -----------------------------------------------------------------------------


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows; the T² keeps its
    gradients on the scale of the hard-label loss whatever the temperature."""
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if alpha >= 1.0 or labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def output_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, mode: Mode) -> torch.Tensor:
    """MSE, or mean cosine distance (1 - cos) per row, between outputs/embeddings."""
    if mode == "mse":
        return F.mse_loss(student_out, teacher_out)
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(student_out, teacher_out, dim=-1)).mean()
    raise DistillError("mode", f"{mode!r} is not an output loss; use 'mse' or 'cosine'")


# --- the teacher -------------------------------------------------------------------------------


def teacher_outputs(teacher: Teacher, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The teacher's outputs on every row of ``x``, flattened to (rows, outputs) float32."""
    if isinstance(teacher, nn.Module):
        was_training = teacher.training
        outputs = predict(teacher, x, batch_size)
        teacher.train(was_training)
    else:
        session = teacher if isinstance(teacher, ort.InferenceSession) else str(teacher)
        outputs = torch.from_numpy(onnx_outputs(session, x.numpy().astype(np.float32), batch_size=batch_size))
    return outputs.reshape(len(x), -1).float()


def teacher_parameters(teacher: Teacher) -> int:
    if isinstance(teacher, nn.Module):
        return parameter_counts(teacher).total
    if isinstance(teacher, ort.InferenceSession):
        raise DistillError("source", "give the parameter count of an ONNX Runtime session teacher (teacher_params)")
    return onnx_parameter_counts(teacher).total


# --- the pass ----------------------------------------------------------------------------------


def build_student(spec: StudentSpec, num_features: int, num_outputs: int, seed: int) -> nn.Sequential:
    """A freshly initialised zoo model, the same for the same seed (the global RNG is left as is)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, num_features, num_outputs)


@dataclass(frozen=True)
class DistillResult:
    student: nn.Sequential
    epoch_losses: list[float]
    student_params: int
    teacher_params: int


def distill(
    teacher: Teacher,
    student_spec: StudentSpec,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    options: DistillOptions | None = None,
    *,
    teacher_params: int | None = None,
) -> DistillResult:
    """Train a student built from ``student_spec`` to imitate ``teacher`` on rows ``x`` (labels
    ``y`` for the hard-label part of ``kd``). Refuses a student that is not smaller."""
    options = options or DistillOptions()
    check_labels(options, y is not None)
    targets = teacher_outputs(teacher, x)
    student = build_student(student_spec, x.shape[1], targets.shape[1], options.seed)
    student_params = parameter_counts(student).total
    teacher_params = teacher_params if teacher_params is not None else teacher_parameters(teacher)
    check_student_smaller(student_params, teacher_params)
    config = TrainConfig(epochs=options.epochs, lr=options.lr, batch_size=options.batch_size, seed=options.seed)
    if options.mode == "kd":
        labels = (y,) if y is not None else ()
        losses = train(student, x, (targets, *labels), _kd(options), config)
    else:
        losses = train(student, x, (targets,), lambda out, target: output_loss(out, target, options.mode), config)
    return DistillResult(student, losses, student_params, teacher_params)


def _kd(options: DistillOptions) -> Callable[..., torch.Tensor]:
    def loss(
        student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, labels, options.temperature, options.alpha)

    return loss


__all__ = [
    "MODES",
    "DistillError",
    "DistillOptions",
    "DistillResult",
    "build_student",
    "check_labels",
    "check_student_smaller",
    "distill",
    "kd_loss",
    "output_loss",
    "soft_target_loss",
    "teacher_outputs",
    "teacher_parameters",
]
