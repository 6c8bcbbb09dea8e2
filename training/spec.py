"""The training job spec: one typed schema, validated once at the edge (the API) and handed
to ``training.run`` as is, plus the checks that need the platform's limits or the uploaded
dataset's stored details but never the data itself.

Owns: ``TrainingSpec`` and its parts, the pure shape rules shared with ``training.data``
(how many pipeline-stageable blocks a model has, whether a feature shape fits an
architecture, how rows split into train and validation), ``check_limits`` and
``check_dataset_fits``. Must not import torch (the API imports this module).

Every error carries a location that maps to a JSON pointer into the spec
(``("strategy", "pipeline_stages")`` → ``/strategy/pipeline_stages``); the discriminated
``model`` union reports ``/model/hidden``, never the union tag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from core.spec_kit import (
    FILE_ID_PATTERN,
    REGISTER_AS_PATTERN,
    FieldError,
    FieldProblem,
    Loc,
    StoredDataset,
    StrictModel,
    error_at,
    error_details,
    exactly_one_of,
    numeric_column,
    numeric_dtype,
    one_of_error,
    relocated,
    relocating,
    stored_dataset,
)

MAX_TRANSFORMER_TOKENS = 1024
MAX_CLASSES = 10_000


# --- model -------------------------------------------------------------------------------------


class MLPSpec(StrictModel):
    """Fully connected blocks (Linear, ReLU, Dropout) then a linear head."""

    arch: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [64], min_length=1, max_length=16
    )
    dropout: float = Field(0.0, ge=0.0, le=0.9)


class CNNSpec(StrictModel):
    """Conv blocks over a single-channel square image (the features, row-major: 64 → 8x8),
    each Conv(kernel_size, same padding), ReLU and a 2x2 max-pool while the side is ≥ 4,
    then a linear head."""

    arch: Literal["cnn"]
    channels: list[Annotated[int, Field(ge=1, le=512)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=6
    )
    kernel_size: int = Field(3, ge=1, le=9)
    dropout: float = Field(0.0, ge=0.0, le=0.9)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd, so that 'same' padding keeps the image size")
        return value


class TransformerSpec(StrictModel):
    """A transformer-encoder classifier in the FT-Transformer style: every feature is one
    token (its value times a learned per-feature vector plus a per-feature bias), then
    ``layers`` pre-norm encoder blocks, then mean pooling over tokens and a linear head."""

    arch: Literal["transformer"]
    d_model: int = Field(32, ge=4, le=1024)
    heads: int = Field(4, ge=1, le=32)
    layers: int = Field(2, ge=1, le=24)
    ff_dim: int = Field(64, ge=4, le=8192)
    dropout: float = Field(0.0, ge=0.0, le=0.9)

    @field_validator("heads")
    @classmethod
    def _divides_d_model(cls, value: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % value:
            raise ValueError(f"heads ({value}) must divide d_model ({d_model})")
        return value


# transformer layers of each pretrained text encoder (what freeze_layers may name)
PRETRAINED_LAYERS = {"all-minilm-l6-v2": 6}
MAX_TEXT_TOKENS = 512


class TextEncoderSpec(StrictModel):
    """A pretrained text encoder (loaded from its installed package, never downloaded) with
    masked mean pooling and a classification or regression head, fine-tuned on a text dataset
    (the dataset's ``text_column``). The exported model takes strings."""

    arch: Literal["text_encoder"]
    pretrained: Literal["all-minilm-l6-v2"] = Field(
        description="which pretrained encoder: all-minilm-l6-v2 (6 layers, 384 wide, uncased WordPiece)"
    )
    max_length: int = Field(
        128, ge=8, le=MAX_TEXT_TOKENS, description="tokens per text, [CLS] and [SEP] included; longer texts are cut"
    )
    freeze_encoder: bool = Field(False, description="train the head only; the encoder keeps its pretrained weights")
    freeze_layers: int = Field(
        0, ge=0, le=48, description="freeze the embeddings and this many lower transformer layers (0: train all)"
    )
    dropout: float = Field(0.1, ge=0.0, le=0.9, description="dropout before the head")
    head: Literal["classification", "regression"] = Field(
        "classification",
        description="`classification`: class labels, cross-entropy, scores and the label out; `regression`: a "
        "numeric label column, mean squared error, validation MAE/RMSE/R², one `value` out",
    )

    @model_validator(mode="after")
    def _layers_exist(self) -> TextEncoderSpec:
        layers = PRETRAINED_LAYERS[self.pretrained]
        if self.freeze_layers > layers:
            raise error_at(
                ("freeze_layers",), f"{self.pretrained} has {layers} layers; cannot freeze {self.freeze_layers}"
            )
        if self.freeze_encoder and self.freeze_layers:
            raise error_at(("freeze_layers",), "freeze_encoder already freezes every layer; give one or the other")
        return self


ModelSpec = Annotated[MLPSpec | CNNSpec | TransformerSpec, Field(discriminator="arch")]
# what a training job may train: the zoo, and the pretrained text encoders
AnyModel = MLPSpec | CNNSpec | TransformerSpec | TextEncoderSpec
TrainingModelSpec = Annotated[AnyModel, Field(discriminator="arch")]
ARCH_TAGS = frozenset({"mlp", "cnn", "transformer", "text_encoder"})


def stageable_layers(model: AnyModel) -> int:
    """How many top-level blocks ``training.zoo.build_model`` makes: the units a pipeline
    stage is cut from (a text encoder is not cut: 1)."""
    if isinstance(model, TextEncoderSpec):
        return 1
    if isinstance(model, MLPSpec):
        return len(model.hidden) + 1
    if isinstance(model, CNNSpec):
        return len(model.channels) + 1
    return model.layers + 2  # token embedding, encoder blocks, head


# --- data --------------------------------------------------------------------------------------


class DatasetSpec(StrictModel):
    """Exactly one of ``file_id`` (an uploaded npz, csv or parquet) or ``builtin``."""

    model_config = ConfigDict(
        json_schema_extra=exactly_one_of({"file_id": ["label_column", "text_column"], "builtin": []})
    )
    file_id: str | None = Field(None, pattern=FILE_ID_PATTERN)
    label_column: str | None = Field(None, min_length=1, max_length=256)
    text_column: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="a text dataset (csv or parquet) for a text_encoder: the column of texts, tokenized in the job "
        "with the model's own tokenizer; every other column but the label is ignored",
    )
    builtin: Literal["digits"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.file_id is None) == (self.builtin is None):
            raise one_of_error("give exactly one of file_id or builtin")
        for name in ("label_column", "text_column"):
            if self.builtin is not None and getattr(self, name) is not None:
                raise error_at((name,), f"{name} applies to an uploaded csv or parquet file, not a builtin")
        return self


class ValidationSpec(StrictModel):
    """Exactly one of ``fraction`` (held out from the training data) or ``file_id``."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of({"fraction": [], "file_id": []}))

    fraction: float | None = Field(None, gt=0.0, le=0.5)
    file_id: str | None = Field(None, pattern=FILE_ID_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> ValidationSpec:
        if (self.fraction is None) == (self.file_id is None):
            raise one_of_error("give exactly one of fraction or file_id")
        return self


def split_sizes(rows: int, fraction: float) -> tuple[int, int]:
    """(train rows, validation rows) for a held-out ``fraction``; at least one validation row."""
    n_val = max(1, round(rows * fraction))
    return rows - n_val, n_val


def image_side(feature_shape: Sequence[int]) -> int | None:
    """The side of the single-channel square image a CNN sees, or None when the features
    are not one: (64,) → 8, (8, 8) → 8, (1, 8, 8) → 8."""
    dims = [d for d in feature_shape]
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 2:
        return dims[0] if dims[0] == dims[1] else None
    if len(dims) == 1:
        side = math.isqrt(dims[0])
        return side if side * side == dims[0] else None
    return None


def model_fit_problems(model: AnyModel, feature_shape: Sequence[int]) -> list[FieldProblem]:
    """Why features of ``feature_shape`` (per row) cannot feed ``model``; empty when they can."""
    if isinstance(model, TextEncoderSpec):
        return []  # it takes texts; describe_text_table checked the column
    features = math.prod(feature_shape)
    shape = "x".join(str(d) for d in feature_shape)
    if features < 1:
        return [{"pointer": "/dataset", "detail": f"the rows have no features (feature shape {shape})"}]
    if isinstance(model, CNNSpec) and image_side(feature_shape) is None:
        return [
            {
                "pointer": "/model/arch",
                "detail": f"a cnn needs a single-channel square image per row; the features have shape {shape} "
                f"({features} values, not a square number or not square), use mlp or transformer",
            }
        ]
    if isinstance(model, TransformerSpec) and features > MAX_TRANSFORMER_TOKENS:
        return [
            {
                "pointer": "/model/arch",
                "detail": f"a transformer makes one token per feature; {features} features exceed the "
                f"{MAX_TRANSFORMER_TOKENS}-token limit",
            }
        ]
    return []


# --- strategy and hyperparameters ----------------------------------------------------------------


# which way is better for each validation metric (early stopping, checkpoint retention)
BEST_MODES: dict[str, Literal["min", "max"]] = {
    "val_loss": "min",
    "val_accuracy": "max",
    "val_mae": "min",
    "val_rmse": "min",
    "val_r2": "max",
}
# the validation metrics of each kind of head (a regression head has no accuracy)
CLASSIFICATION_METRICS = ("val_loss", "val_accuracy")
REGRESSION_METRICS = ("val_loss", "val_mae", "val_rmse", "val_r2")
ValMetric = Literal["val_loss", "val_accuracy", "val_mae", "val_rmse", "val_r2"]


class StrategySpec(StrictModel):
    """How the job is parallelised. ``pipeline`` runs one stage per process
    (``pipeline_stages`` defaults to the world size); ``hybrid`` is data parallel over
    ``world_size / pipeline_stages`` pipeline replicas (a 2-D mesh)."""

    kind: Literal["ddp", "fsdp", "pipeline", "hybrid"] = "ddp"
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1, le=64)
    pipeline_stages: int | None = Field(None, ge=1, le=64)
    microbatches: int | None = Field(None, ge=1, le=1024)
    schedule: Literal["gpipe", "1f1b"] = "1f1b"

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def stages(self) -> int:
        """Pipeline stages after defaults (1 when the strategy does not pipeline)."""
        return self.pipeline_stages or 1

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.stages

    @property
    def pipelined(self) -> bool:
        return self.kind in ("pipeline", "hybrid")


class LRScheduleSpec(StrictModel):
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then ``decay`` to
    ``lr x min_lr_ratio`` at the run's last step (``training.schedule``)."""

    decay: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="the shape after warm-up: half a cosine, a straight line, or flat at `lr`"
    )
    warmup_steps: int = Field(
        0, ge=0, le=10_000_000, description="optimizer steps of linear warm-up; fewer than the run's total steps"
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="the last step's learning rate, as a fraction of lr")


class EarlyStoppingSpec(StrictModel):
    """Evaluate at every epoch's end; stop after ``patience`` evaluations without an
    improvement larger than ``min_delta``; the exported model is the best evaluation's."""

    metric: ValMetric = Field(
        "val_loss",
        description="the validation metric watched (evaluated at each epoch's end); val_accuracy for a classifier, "
        "val_mae, val_rmse or val_r2 for a regression head, val_loss for either",
    )
    mode: Literal["min", "max"] | None = Field(
        None,
        description="`min` (lower is better) or `max`; defaults to the metric's own (val_loss, val_mae, val_rmse "
        "min; val_accuracy, val_r2 max)",
    )
    patience: int = Field(3, ge=1, le=10_000, description="evaluations without improvement before the run stops")
    min_delta: float = Field(0.0, ge=0.0, description="the least change that counts as an improvement")

    @model_validator(mode="after")
    def _mode_fits_metric(self) -> EarlyStoppingSpec:
        natural = BEST_MODES[self.metric]
        if self.mode is not None and self.mode != natural:
            raise error_at(
                ("mode",),
                f"{self.metric} is better when {'lower' if natural == 'min' else 'higher'}: mode must be {natural}",
            )
        self.mode = natural
        return self


class HyperparametersSpec(StrictModel):
    epochs: int = Field(10, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="stop after this many steps")
    batch_size: int = Field(32, ge=1, le=65_536, description="global: summed over data-parallel replicas")
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    lr_schedule: LRScheduleSpec | None = Field(
        None, description="how the learning rate moves over the run; null keeps `lr` constant"
    )
    grad_clip_norm: float | None = Field(
        None,
        gt=0.0,
        le=1e6,
        description="clip the gradients' global L2 norm (over the whole model, all ranks) to this before each "
        "optimizer step; null does not clip",
    )
    grad_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="split each replica's share of the global batch into this many chunks, backward each and "
        "step once: the same update with a fraction of the activation memory (ddp and fsdp; it must divide "
        "batch_size / processes)",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="`bf16` or `fp16` run the forward pass under autocast (weights stay fp32; fp16 with a "
        "gradient scaler). fp16 needs CUDA workers; bf16 also runs on CPU (fast only where the CPU has "
        "native bf16, e.g. AVX512-BF16 or AMX). ddp and fsdp only",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop when a validation metric stops improving, and export the best weights seen"
    )

    @model_validator(mode="after")
    def _momentum_is_sgd(self) -> HyperparametersSpec:
        if self.momentum and self.optimizer != "sgd":
            raise error_at(("momentum",), f"momentum applies to sgd only, not {self.optimizer}")
        return self


# --- checkpoint retention ------------------------------------------------------------------------


class KeepBestSpec(StrictModel):
    """Which checkpoint counts as the best: the lowest ``val_loss`` or the highest ``val_accuracy``
    (a regression head: the lowest ``val_mae``/``val_rmse``, the highest ``val_r2``)."""

    metric: ValMetric = Field(
        description="the validation metric a checkpoint is ranked by (the latest validation before it was "
        "written): `val_loss` keeps the lowest, `val_accuracy` the highest; a regression head's `val_mae` and "
        "`val_rmse` the lowest, `val_r2` the highest"
    )

    @property
    def mode(self) -> Literal["min", "max"]:
        return BEST_MODES[self.metric]


class CheckpointsSpec(StrictModel):
    """Which of a job's checkpoints are kept; the others are deleted as new ones are uploaded."""

    keep_last: int = Field(
        3, ge=1, le=1000, description="how many of the newest checkpoints to keep, across all attempts of the job"
    )
    keep_best: KeepBestSpec | None = Field(
        None, description="also keep the best checkpoint by a validation metric; null keeps only the newest"
    )


# --- fine-tuning -------------------------------------------------------------------------------


class InitFromSpec(StrictModel):
    """A registered version of the tenant's whose weights the job starts from."""

    model: str = Field(min_length=1, max_length=128, description="the registered model's name")
    version: int = Field(
        ge=1, description="its version; it must have been trained by the platform with the same model spec"
    )


# --- the spec ----------------------------------------------------------------------------------


class TrainingSpec(StrictModel):
    model: TrainingModelSpec
    dataset: DatasetSpec
    validation: ValidationSpec = Field(default_factory=lambda: ValidationSpec(fraction=0.1))
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    checkpoint_every_steps: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="a checkpoint is due once this many steps AND checkpoint_every_seconds have passed since the "
        "last one (whichever comes later); the run's last step and a preemption always checkpoint",
    )
    checkpoint_every_seconds: float = Field(
        300.0,
        ge=0.0,
        le=86_400.0,
        description="the least time between checkpoints (0: by steps alone); checkpoints are written and uploaded "
        "in the background, the step only copies the state",
    )
    checkpoints: CheckpointsSpec = Field(
        default_factory=CheckpointsSpec, description="how many checkpoints to keep (the others are deleted)"
    )
    register_as: str | None = Field(None, pattern=REGISTER_AS_PATTERN)
    init_from: InitFromSpec | None = Field(
        None,
        description="fine-tune: start from the weights of a registered version of the same architecture and "
        "settings (a head for another number of classes starts afresh); null starts from the zoo's initialisation",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _pointers_without_union_tags(cls, data: Any, handler: ModelWrapValidatorHandler[TrainingSpec]) -> TrainingSpec:
        return relocating(handler, data, _untagged)

    @model_validator(mode="after")
    def _cross_field(self) -> TrainingSpec:
        _resolve_pipeline_defaults(self.strategy)
        problems = _cross_field_problems(self) + training_option_problems(self)
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [error_details(loc, msg, _value_at(self, loc)) for loc, msg in problems],
            )
        return self


def _resolve_pipeline_defaults(strategy: StrategySpec) -> None:
    """Fill in what a pipelined strategy leaves out, so the worker gets explicit values."""
    if strategy.kind == "pipeline" and strategy.pipeline_stages is None:
        strategy.pipeline_stages = strategy.world_size
    if strategy.pipelined and strategy.microbatches is None and strategy.pipeline_stages is not None:
        strategy.microbatches = max(4, strategy.pipeline_stages)


def _cross_field_problems(spec: TrainingSpec) -> list[tuple[Loc, str]]:
    strategy, hp = spec.strategy, spec.hyperparameters
    text = _text_problems(spec) or _metric_problems(spec)
    if text:
        return text
    if not strategy.pipelined:
        return _data_parallel_problems(strategy, hp)
    if strategy.pipeline_stages is None:
        return [(("strategy", "pipeline_stages"), "hybrid needs pipeline_stages (the pipeline depth)")]
    problems = _pipeline_problems(strategy, spec.model)
    if not problems:
        per_replica = strategy.data_parallel_size * (strategy.microbatches or 1)
        if hp.batch_size % per_replica:
            problems.append(
                (
                    ("hyperparameters", "batch_size"),
                    f"batch_size ({hp.batch_size}) must be divisible by data-parallel replicas x microbatches "
                    f"({strategy.data_parallel_size} x {strategy.microbatches} = {per_replica})",
                )
            )
    return problems


def training_option_problems(spec: TrainingSpec) -> list[tuple[Loc, str]]:
    """Where the optimisation options (schedule, accumulation, precision) misfit the rest of
    the spec; the warm-up against the data's step count is ``check_dataset_fits``'s."""
    strategy, hp = spec.strategy, spec.hyperparameters
    problems: list[tuple[Loc, str]] = []
    accumulation = hp.grad_accumulation_steps
    if accumulation > 1 and strategy.pipelined:
        problems.append(
            (
                ("hyperparameters", "grad_accumulation_steps"),
                f"{strategy.kind} already splits each batch into microbatches; raise strategy.microbatches "
                "instead of accumulating",
            )
        )
    elif accumulation > 1 and hp.batch_size % (strategy.world_size * accumulation):
        problems.append(
            (
                ("hyperparameters", "grad_accumulation_steps"),
                f"grad_accumulation_steps ({accumulation}) must divide each process's share of the batch: "
                f"batch_size ({hp.batch_size}) / processes ({strategy.world_size}) is not a multiple of it",
            )
        )
    if hp.precision != "fp32" and strategy.pipelined:
        problems.append(
            (("hyperparameters", "precision"), f"mixed precision runs with ddp and fsdp, not {strategy.kind}")
        )
    if hp.lr_schedule is not None and hp.max_steps is not None and hp.lr_schedule.warmup_steps >= hp.max_steps:
        problems.append(
            (
                ("hyperparameters", "lr_schedule", "warmup_steps"),
                f"warmup_steps ({hp.lr_schedule.warmup_steps}) must be fewer than the run's steps "
                f"(max_steps {hp.max_steps})",
            )
        )
    return problems


def precision_problems(spec: TrainingSpec, cuda: bool) -> list[FieldProblem]:
    """Where the spec asks for a precision the training workers cannot run."""
    if spec.hyperparameters.precision == "fp16" and not cuda:
        return [{"pointer": "/hyperparameters/precision",
                 "detail": "fp16 autocast needs CUDA GPUs and this platform's training workers have none; "
                           "use bf16 (runs on CPU) or fp32"}]  # fmt: skip
    return []


def total_steps(train_rows: int, hp: HyperparametersSpec) -> int:
    """The optimizer steps of a run over ``train_rows`` rows (full global batches per epoch)."""
    per_epoch = train_rows // hp.batch_size
    return per_epoch * hp.epochs if hp.max_steps is None else min(per_epoch * hp.epochs, hp.max_steps)


def _text_problems(spec: TrainingSpec) -> list[tuple[Loc, str]]:
    """A text encoder trains on a text column, with DDP; a text column needs a text encoder."""
    is_text = isinstance(spec.model, TextEncoderSpec)
    if is_text and spec.dataset.text_column is None:
        where: Loc = ("dataset", "text_column") if spec.dataset.file_id else ("dataset", "builtin")
        return [(where, "a text_encoder trains on texts: give a csv or parquet file_id and its text_column")]
    if not is_text and spec.dataset.text_column is not None:
        return [(("dataset", "text_column"), f"text_column is for a text_encoder; a {spec.model.arch} takes numbers")]
    if is_text and spec.strategy.kind != "ddp":
        return [(("strategy", "kind"), "a text_encoder trains with ddp (its encoder is not cut into stages or shards)")]
    return []


def is_regression(spec: TrainingSpec) -> bool:
    return isinstance(spec.model, TextEncoderSpec) and spec.model.head == "regression"


def _metric_problems(spec: TrainingSpec) -> list[tuple[Loc, str]]:
    """Early stopping and checkpoint retention watch a metric the model's head reports."""
    regression = is_regression(spec)
    known = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    head = "a regression head" if regression else "a classifier"
    problems: list[tuple[Loc, str]] = []
    stopping = spec.hyperparameters.early_stopping
    if stopping is not None and stopping.metric not in known:
        where: Loc = ("hyperparameters", "early_stopping", "metric")
        problems.append((where, f"{head} reports {', '.join(known)}; not {stopping.metric}"))
    best = spec.checkpoints.keep_best
    if best is not None and best.metric not in known:
        where = ("checkpoints", "keep_best", "metric")
        problems.append((where, f"{head} reports {', '.join(known)}; not {best.metric}"))
    return problems


def _data_parallel_problems(strategy: StrategySpec, hp: HyperparametersSpec) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for name in ("pipeline_stages", "microbatches"):
        if getattr(strategy, name) not in (None, 1):
            problems.append((("strategy", name), f"only the pipeline and hybrid strategies use {name}"))
    if hp.batch_size % strategy.world_size:
        problems.append(
            (
                ("hyperparameters", "batch_size"),
                f"batch_size ({hp.batch_size}) must be divisible by the number of processes "
                f"(nproc_per_node x nnodes = {strategy.world_size})",
            )
        )
    return problems


def _pipeline_problems(strategy: StrategySpec, model: AnyModel) -> list[tuple[Loc, str]]:
    stages, world = strategy.stages, strategy.world_size
    blocks = stageable_layers(model)
    if stages > blocks:
        return [
            (
                ("strategy", "pipeline_stages"),
                f"the {model.arch} has {blocks} stageable blocks, too few for {stages} pipeline stages",
            )
        ]
    if strategy.kind == "pipeline" and stages != world:
        return [
            (
                ("strategy", "pipeline_stages"),
                f"pipeline runs one stage per process: pipeline_stages ({stages}) must equal "
                f"nproc_per_node x nnodes ({world}); use hybrid to add data parallelism",
            )
        ]
    if strategy.kind == "hybrid" and world % stages:
        return [
            (
                ("strategy", "pipeline_stages"),
                f"hybrid needs nproc_per_node x nnodes ({world}) divisible by pipeline_stages ({stages})",
            )
        ]
    if strategy.schedule == "1f1b" and (strategy.microbatches or 1) < stages:
        return [
            (
                ("strategy", "microbatches"),
                f"the 1f1b schedule needs at least as many microbatches as stages ({stages})",
            )
        ]
    return []


def _value_at(spec: BaseModel, loc: Loc) -> Any:
    value: Any = spec
    for part in loc:
        value = getattr(value, str(part), None)
    return value


def _untagged(error: Any) -> InitErrorDetails:
    """The same error without the union tag pydantic puts in locations (``model.mlp.hidden``)."""
    loc = tuple(error["loc"])
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in ARCH_TAGS:
        loc = loc[:1] + loc[2:]
    elif loc == ("model",) and error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = ("model", "arch")  # the field at fault is the discriminator
    return relocated(error, loc)


# --- checks against the platform and the uploaded data ---------------------------------------


def check_limits(spec: TrainingSpec, max_nproc_per_node: int, max_nnodes: int) -> list[FieldProblem]:
    """Where the spec asks for more processes than this platform offers."""
    problems: list[FieldProblem] = []
    if spec.strategy.nproc_per_node > max_nproc_per_node:
        problems.append(
            {
                "pointer": "/strategy/nproc_per_node",
                "detail": f"at most {max_nproc_per_node} processes per node here, "
                f"asked for {spec.strategy.nproc_per_node}",
            }
        )
    if spec.strategy.nnodes > max_nnodes:
        problems.append(
            {
                "pointer": "/strategy/nnodes",
                "detail": f"at most {max_nnodes} node{'s' * (max_nnodes != 1)} here, asked for {spec.strategy.nnodes}",
            }
        )
    return problems


# What the upload validator would store for each builtin dataset.
BUILTIN_DETAILS: dict[str, dict[str, Any]] = {
    "digits": {"arrays": {"X": {"dtype": "float32", "shape": [1797, 8, 8]}, "y": {"dtype": "int64", "shape": [1797]}}}
}


def check_dataset_fits(
    spec: TrainingSpec,
    dataset_details: dict[str, Any] | None,
    validation_details: dict[str, Any] | None = None,
) -> list[FieldProblem]:
    """Where the uploaded file(s), described by the details the upload validator stored
    (npz ``{"arrays": {...}}``, csv ``{"columns": [...], "rows": n}``, parquet
    ``{"columns": [{"name", "type"}], "rows": n}``), cannot train ``spec``'s model. For a
    builtin dataset ``dataset_details`` is ignored (pass None)."""
    if spec.dataset.builtin is not None:
        dataset_details = BUILTIN_DETAILS[spec.dataset.builtin]
    if dataset_details is None:
        return [{"pointer": "/dataset/file_id", "detail": "the dataset file has no stored details"}]
    text_column = spec.dataset.text_column
    try:
        if text_column is not None:
            rows, feature_shape = describe_text_table(
                dataset_details, text_column, spec.dataset.label_column, "/dataset", regression=is_regression(spec)
            )
        else:
            rows, feature_shape = _describe(dataset_details, spec.dataset.label_column, "/dataset")
    except FieldError as exc:
        return [exc.problem]
    problems = model_fit_problems(spec.model, feature_shape)
    if validation_details is not None and spec.validation.file_id is not None:
        if text_column is not None:
            try:
                describe_text_table(
                    validation_details,
                    text_column,
                    spec.dataset.label_column,
                    "/validation",
                    regression=is_regression(spec),
                )
            except FieldError as exc:
                problems.append(exc.problem)
        else:
            problems += _validation_file_problems(validation_details, spec.dataset.label_column, feature_shape)
    if spec.validation.fraction is not None:
        n_train, _ = split_sizes(rows, spec.validation.fraction)
        if n_train < 1:
            problems.append(
                {"pointer": "/validation/fraction", "detail": f"{rows} rows leave none for training after the split"}
            )
            return problems
    else:
        n_train = rows
    if spec.hyperparameters.batch_size > n_train:
        problems.append(
            {
                "pointer": "/hyperparameters/batch_size",
                "detail": f"batch_size ({spec.hyperparameters.batch_size}) exceeds the {n_train} training rows",
            }
        )
    elif (schedule := spec.hyperparameters.lr_schedule) is not None:
        steps = total_steps(n_train, spec.hyperparameters)
        if schedule.warmup_steps >= steps:
            problems.append(
                {
                    "pointer": "/hyperparameters/lr_schedule/warmup_steps",
                    "detail": f"warmup_steps ({schedule.warmup_steps}) must be fewer than the run's "
                    f"{steps} steps ({n_train} training rows / batch_size x epochs)",
                }
            )
    return problems


def _validation_file_problems(
    details: dict[str, Any], label_column: str | None, feature_shape: tuple[int, ...]
) -> list[FieldProblem]:
    try:
        _, val_shape = _describe(details, label_column, "/validation")
    except FieldError as exc:
        return [exc.problem]
    if math.prod(val_shape) != math.prod(feature_shape):
        return [
            {
                "pointer": "/validation/file_id",
                "detail": f"the validation file has {math.prod(val_shape)} features per row, "
                f"the training data {math.prod(feature_shape)}",
            }
        ]
    return []


def _describe(details: dict[str, Any], label_column: str | None, pointer: str) -> tuple[int, tuple[int, ...]]:
    """(rows, feature shape per row) from stored upload details; ``FieldError`` when they cannot train."""
    try:
        stored = stored_dataset(details)
    except ValueError as exc:
        raise FieldError(pointer, str(exc)) from None
    if stored.is_table:
        return _describe_table(stored, label_column, pointer)
    if label_column is not None:
        raise FieldError(f"{pointer}/label_column", "an npz file has arrays X and y; label_column is for csv/parquet")
    return _describe_npz(stored, pointer)


def _describe_npz(stored: StoredDataset, pointer: str) -> tuple[int, tuple[int, ...]]:
    arrays = stored.arrays or {}
    missing = [name for name in ("X", "y") if name not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none"
        raise FieldError(
            pointer, f"an npz dataset needs arrays X and y; missing {' and '.join(missing)} (found {found})"
        )
    x, y = arrays["X"], arrays["y"]
    if len(x.shape) < 2:
        raise FieldError(
            pointer, f"X must have one row per sample and at least one feature; its shape is {list(x.shape)}"
        )
    if not numeric_dtype(x.dtype):
        raise FieldError(pointer, f"X must be numeric; its dtype is {x.dtype}")
    if not (len(y.shape) == 1 or (len(y.shape) == 2 and y.shape[1] == 1)):
        raise FieldError(pointer, f"y must hold one label per row; its shape is {list(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise FieldError(pointer, f"X has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise FieldError(pointer, f"a dataset needs at least 2 rows, this one has {x.shape[0]}")
    return x.shape[0], tuple(x.shape[1:])


def describe_text_table(
    details: dict[str, Any], text_column: str, label_column: str | None, pointer: str, *, regression: bool = False
) -> tuple[int, tuple[int, ...]]:
    """(rows, ()) of a text dataset's stored details: a csv or parquet with ``text_column``
    (strings, where the type is known) and the label column (numbers for a regression head,
    where the type is known); ``FieldError`` when it cannot."""
    try:
        stored = stored_dataset(details)
    except ValueError as exc:
        raise FieldError(pointer, str(exc)) from None
    if not stored.is_table:
        raise FieldError(
            f"{pointer}/text_column", "a text dataset is a csv or parquet file with a text column, not an npz"
        )
    names = stored.column_names
    for column, name, field in (
        (text_column, text_column, "text_column"),
        (label_column, label_column or "label", "label_column"),
    ):
        if name not in names:
            where = f"{pointer}/{field}" if column else pointer
            hint = "" if column else " (the default label column); set label_column"
            raise FieldError(where, f"there is no column '{name}'{hint}; columns are {', '.join(names[:20])}")
    typed = {c.name: c.type for c in stored.columns or ()}
    kind = typed.get(text_column)
    if kind is not None and not kind.startswith(("string", "large_string", "utf8", "large_utf8")):
        raise FieldError(f"{pointer}/text_column", f"column '{text_column}' has type {kind}; texts must be strings")
    label = next(c for c in stored.columns or () if c.name == (label_column or "label"))
    if regression and not numeric_column(label):
        where = f"{pointer}/label_column" if label_column else pointer
        raise FieldError(where, f"column '{label.name}' has type {label.type}; a regression head needs numeric labels")
    if stored.rows < 2:
        raise FieldError(pointer, f"a dataset needs at least 2 rows, this one has {stored.rows}")
    return stored.rows, ()


def _describe_table(stored: StoredDataset, label_column: str | None, pointer: str) -> tuple[int, tuple[int, ...]]:
    names = stored.column_names
    label = label_column or "label"
    if label not in names:
        where = f"{pointer}/label_column" if label_column else pointer
        hint = "" if label_column else " (the default label column); set label_column"
        raise FieldError(where, f"there is no column '{label}'{hint}; columns are {', '.join(names[:20])}")
    for column in stored.columns or ():
        if column.name != label and not numeric_column(column):
            raise FieldError(
                pointer, f"feature column '{column.name}' has type {column.type}; features must be numeric"
            )
    if len(names) < 2:
        raise FieldError(pointer, "the file has a label column but no feature columns")
    if stored.rows < 2:
        raise FieldError(pointer, f"a dataset needs at least 2 rows, this one has {stored.rows}")
    return stored.rows, (len(names) - 1,)
