"""The compression job spec: one typed schema, validated at the edge (the API) and handed to the
worker and the CLI as is, plus the pure checks of a valid spec against what the source model
and the data files are (``SourceFacts``, stored upload details) that the API runs before a job
is created.

Owns: ``CompressionSpec`` and its parts (the source, the passes with typed options per kind,
the data, the accuracy floor, the measurement settings); the order rules of passes (nothing
needs the torch model after quantization has left only an ONNX graph); parameter counts of zoo
architectures computed from their spec (so a student larger than its teacher is refused without
building either); and ``check_against_source`` / ``check_data_fits``, which take facts, never
the database. Must not import torch (the API imports this module).

Every error carries a location that maps to a JSON pointer into the spec
(``("passes", 0, "amount")`` → ``/passes/0/amount``); the union tags pydantic puts in
locations (``passes.0.prune.amount``) are removed.

The accuracy floor: after every pass the model's eval accuracy must stay at or above
``max(source accuracy - max_drop, min_accuracy)`` (either may be null; default: at most
5 points below the source); without labels the mean cosine similarity of its outputs to the
source's must stay at or above ``min_mean_cosine``. A pass below the floor fails the job
with the numbers and registers nothing.

A regression model (``task_of_output``: its first output is floating point with one value per
row, as a text encoder's regression head exports ``value``) has no accuracy: with labels its
eval MAE must stay at or below ``source MAE · (1 + max_mae_increase)`` (default: at most 10%
more error); without labels the cosine of its vector of values to the source's must stay at or
above ``min_mean_cosine``. ``max_drop``/``min_accuracy`` given for a regression model, or
``max_mae_increase`` for a classifier, is a problem at that field (``check_against_source``),
as is a pass that trains a regression model as a classifier (fine-tuning on class labels,
distillation other than ``mse``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails

from core.input_feeds import SINGLE_INPUT_ARRAY, FeedError, NpzFeed, npz_feed
from core.spec_kit import (
    FILE_ID_PATTERN,
    INT4_MAX,
    MODEL_NAME_PATTERN,
    REGISTER_AS_PATTERN,
    FieldProblem,
    Loc,
    StoredArray,
    StrictModel,
    at_most_one_of,
    error_at,
    error_details,
    exactly_one_of,
    one_of_error,
    relocated,
    relocating,
    stored_dataset,
)
from training.spec import (
    ARCH_TAGS,
    BUILTIN_DETAILS,
    CNNSpec,
    MLPSpec,
    ModelSpec,
    TransformerSpec,
    image_side,
    model_fit_problems,
)

ZooSpec = MLPSpec | CNNSpec | TransformerSpec
PASS_KINDS = ("prune", "distill", "quantize")
Task = Literal["classification", "regression"]
FLOAT_DATATYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})

__all__ = [
    "AccuracyFloor",
    "CalibrationSpec",
    "CompressionSpec",
    "DataSpec",
    "DistillSpec",
    "EvalSpec",
    "MeasurementSpec",
    "PassSpec",
    "ProtectSpec",
    "PruneSpec",
    "QuantizeSpec",
    "SourceFacts",
    "SourceSpec",
    "check_against_source",
    "check_data_fits",
    "describe_rows",
    "feeds_named_inputs",
    "named_feed",
    "remaining_channels",
    "signature_task",
    "state_dict_classes",
    "task_of_output",
    "zoo_parameters",
]


# --- the source --------------------------------------------------------------------------------


class SourceSpec(StrictModel):
    """Exactly one of ``model`` (a registered model, ``version`` or its latest) or ``file_id``
    (an uploaded ``.onnx``, or a ``.safetensors`` state dict of the zoo architecture ``arch``)."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of({"model": ["version"], "file_id": ["arch"]}))
    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN)
    version: int | None = Field(None, ge=1, le=INT4_MAX)
    file_id: str | None = Field(None, pattern=FILE_ID_PATTERN)
    arch: ModelSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if (self.model is None) == (self.file_id is None):
            raise one_of_error("give exactly one of model (with version) or file_id")
        if self.version is not None and self.model is None:
            raise error_at(("version",), "version applies to a registered model, not to a file")
        if self.arch is not None and self.file_id is None:
            raise error_at(
                ("arch",), "a model version knows its architecture; arch applies to an uploaded .safetensors"
            )
        return self


# --- data --------------------------------------------------------------------------------------


Name = Annotated[str, Field(min_length=1, max_length=256)]
InputArrays = Annotated[
    dict[Name, Name] | None,
    Field(
        max_length=64,
        description=".npz only: model input name -> array name, where they differ (an array named after "
        "an input feeds it without this)",
    ),
]
LABELS_ARRAY = "y"  # the labels of an .npz, when no model input is fed from it


class DataSpec(StrictModel):
    """Exactly one of ``file_id`` or ``builtin``. A file is an uploaded npz (``X`` [and ``y``]
    for a model with one input; for a model with several, one array per input named after it or
    mapped in ``inputs``, [and ``y``]), csv or parquet; ``label_column`` names the labels of a
    csv or parquet file."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of({"file_id": ["label_column", "inputs"], "builtin": []}))
    file_id: str | None = Field(None, pattern=FILE_ID_PATTERN)
    builtin: Literal["digits"] | None = None
    label_column: str | None = Field(None, min_length=1, max_length=256)
    inputs: InputArrays = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.file_id is None) == (self.builtin is None):
            raise one_of_error("give exactly one of file_id or builtin")
        for name in ("label_column", "inputs"):
            if self.builtin is not None and getattr(self, name) is not None:
                raise error_at((name,), f"{name} applies to an uploaded file, not a builtin")
        return self

    def same_data(self, other: DataSpec | None) -> bool:
        return other is not None and (self.file_id, self.builtin) == (other.file_id, other.builtin)


class EvalSpec(DataSpec):
    """The rows every model is measured on. When they are the training data as well (the same
    file or builtin as ``dataset``), ``fraction`` of them (seeded by ``seed``) are held out for
    evaluation and the rest fine-tune; ``max_rows`` caps the rows measured."""

    fraction: float = Field(0.2, gt=0.0, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    max_rows: int | None = Field(None, ge=1, le=1_000_000)


class CalibrationSpec(StrictModel):
    """Rows that set static int8 activation ranges (and that a ``protect`` search measures on):
    a ``file_id`` or ``builtin``, else the fine-tuning dataset, else the eval rows. ``rows``
    are drawn evenly spread over the data."""

    model_config = ConfigDict(json_schema_extra=at_most_one_of("file_id", "builtin"))
    file_id: str | None = Field(None, pattern=FILE_ID_PATTERN)
    builtin: Literal["digits"] | None = None
    label_column: str | None = Field(None, min_length=1, max_length=256)
    inputs: InputArrays = None
    rows: int = Field(256, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=4096)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"

    @model_validator(mode="after")
    def _at_most_one_source(self) -> CalibrationSpec:
        if self.file_id is not None and self.builtin is not None:
            raise ValueError("give at most one of file_id or builtin")
        if self.inputs is not None and self.file_id is None:
            raise error_at(("inputs",), "inputs map the arrays of an uploaded .npz (file_id)")
        return self

    @property
    def data(self) -> DataSpec | None:
        if self.file_id is None and self.builtin is None:
            return None
        return DataSpec(file_id=self.file_id, builtin=self.builtin, label_column=self.label_column, inputs=self.inputs)


# --- passes ------------------------------------------------------------------------------------


class PruneSpec(StrictModel):
    """Magnitude pruning: ``amount`` of the weights (unstructured; per ``layer`` or ``global``)
    or of each hidden layer's channels/neurons (``structured``, removed for real), then
    ``fine_tune_epochs`` on the dataset with the pruned weights held at zero."""

    kind: Literal["prune"]
    amount: float = Field(gt=0.0, lt=1.0, description="fraction removed, strictly between 0 and 1")
    structured: bool = False
    scope: Literal["layer", "global"] = "layer"
    norm: Literal["l1", "l2"] = "l1"
    fine_tune_epochs: int = Field(2, ge=0, le=1000)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _structured_is_per_layer(self) -> PruneSpec:
        if self.structured and self.scope == "global":
            raise error_at(("scope",), "structured pruning removes the same fraction of every layer; use 'layer'")
        return self


class DistillSpec(StrictModel):
    """Knowledge distillation into ``student`` (a zoo architecture, smaller than the teacher):
    ``kd`` = alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE(labels); ``mse`` and
    ``cosine`` pull the student's outputs to the teacher's without labels."""

    kind: Literal["distill"]
    student: ModelSpec
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    epochs: int = Field(5, ge=1, le=1000)
    mode: Literal["kd", "mse", "cosine"] = "kd"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ProtectSpec(StrictModel):
    """A measured int8 scheme instead of a plain one: SmoothQuant strength and the nodes kept
    float are chosen by building quantized models and comparing their outputs with the float
    model's on the calibration rows, within ``budget_ratio`` of the float file's bytes."""

    budget_ratio: float = Field(0.30, gt=0.0, le=1.0)
    mean_cosine: float = Field(0.995, gt=0.0, le=1.0)
    min_cosine: float = Field(0.98, gt=0.0, le=1.0)
    smoothing: bool = True


class QuantizeSpec(StrictModel):
    """ONNX Runtime quantization: ``dynamic`` int8 (weights ahead of time, activations per
    batch), ``static`` int8 (QDQ, activation ranges calibrated), or ``fp16``. ``exclude_op_types``
    and ``exclude_nodes`` stay float; ``protect`` chooses the float nodes by measurement."""

    kind: Literal["quantize"]
    mode: Literal["dynamic", "static", "fp16"]
    calibration: CalibrationSpec | None = None
    per_channel: bool = True
    reduce_range: bool = True  # see compression.quantize.REDUCE_RANGE
    exclude_op_types: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    exclude_nodes: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=4096
    )
    protect: ProtectSpec | None = None

    @model_validator(mode="after")
    def _options_fit_the_mode(self) -> QuantizeSpec:
        if self.mode == "fp16":
            for name in ("calibration", "protect"):
                if getattr(self, name) is not None:
                    raise error_at((name,), f"{name} applies to int8 (dynamic or static), not fp16")
        if self.protect is not None and (self.exclude_nodes or self.exclude_op_types):
            raise error_at(
                ("protect",), "protect chooses the nodes kept float by measurement; drop exclude_nodes/op_types"
            )
        known = quantizable_op_types(self.mode)
        unknown = sorted(set(self.exclude_op_types) - known) if known is not None else []
        if unknown:
            raise error_at(
                ("exclude_op_types",),
                f"{', '.join(unknown)}: not op types the {self.mode} quantizer handles; "
                f"it handles {', '.join(sorted(known or ()))}",
            )
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "static" or self.protect is not None

    @property
    def effective_calibration(self) -> CalibrationSpec:
        return self.calibration or CalibrationSpec()


def quantizable_op_types(mode: str) -> frozenset[str] | None:
    """The op types ONNX Runtime's quantizer for ``mode`` handles; None for fp16 (any op can
    stay fp32)."""
    # imported here: onnxruntime is not needed to read a spec otherwise
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    if mode == "dynamic":
        return frozenset(IntegerOpsRegistry)
    if mode == "static":
        return frozenset(QDQRegistry)
    return None


PassSpec = Annotated[PruneSpec | DistillSpec | QuantizeSpec, Field(discriminator="kind")]


# --- the rest ----------------------------------------------------------------------------------


class AccuracyFloor(StrictModel):
    """Where a pass has destroyed the model (see the module docstring); null turns a part off."""

    max_drop: float | None = Field(
        0.05, ge=0.0, le=1.0, description="a classifier's: accuracy below the source's, as a fraction"
    )
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="a classifier's")
    max_mae_increase: float | None = Field(
        0.10,
        ge=0.0,
        le=100.0,
        description="a regression model's: eval MAE above the source's, as a fraction of the source's "
        "(0.1: at most 10% more error)",
    )
    min_mean_cosine: float | None = Field(0.95, ge=-1.0, le=1.0, description="without labels")

    def accuracy_floor(self, source_accuracy: float) -> float | None:
        floors = [f for f in (self._relative(source_accuracy), self.min_accuracy) if f is not None]
        return max(floors) if floors else None

    def mae_ceiling(self, source_mae: float) -> float | None:
        """The largest eval MAE a regression model may have after a pass."""
        return None if self.max_mae_increase is None else source_mae * (1.0 + self.max_mae_increase)

    def _relative(self, source_accuracy: float) -> float | None:
        return None if self.max_drop is None else source_accuracy - self.max_drop


class MeasurementSpec(StrictModel):
    """How speed is measured: ONNX Runtime with ``threads`` intra-op threads, p50 latency over
    ``latency_iterations`` calls at batch 1, throughput at ``throughput_batch``."""

    threads: int = Field(1, ge=1, le=64)
    latency_iterations: int = Field(200, ge=1, le=100_000)
    throughput_iterations: int = Field(50, ge=1, le=100_000)
    throughput_batch: int = Field(32, ge=1, le=4096)
    warmup: int = Field(10, ge=0, le=10_000)
    speed: bool = True


class CompressionSpec(StrictModel):
    source: SourceSpec
    passes: list[PassSpec] = Field(min_length=1, max_length=16)
    dataset: DataSpec | None = Field(
        None,
        description="rows for fine-tuning and distillation (labelled) and for calibration; default: the source's own",
    )
    eval: EvalSpec
    accuracy_floor: AccuracyFloor = Field(default_factory=AccuracyFloor)
    measurement: MeasurementSpec = Field(default_factory=MeasurementSpec)
    register_as: str | None = Field(None, pattern=REGISTER_AS_PATTERN)

    @model_validator(mode="wrap")
    @classmethod
    def _pointers_without_union_tags(
        cls, data: Any, handler: ModelWrapValidatorHandler[CompressionSpec]
    ) -> CompressionSpec:
        return relocating(handler, data, _untagged)

    @model_validator(mode="after")
    def _pass_order(self) -> CompressionSpec:
        problems = pass_order_problems(self.passes)
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__, [error_details(loc, msg, None) for loc, msg in problems]
            )
        return self


def pass_order_problems(passes: Sequence[PruneSpec | DistillSpec | QuantizeSpec]) -> list[tuple[Loc, str]]:
    """Passes that come after a quantization: a quantized model is an ONNX graph only."""
    problems: list[tuple[Loc, str]] = []
    quantized_at: int | None = None
    for index, item in enumerate(passes):
        if quantized_at is not None:
            what = "quantize a model twice" if item.kind == "quantize" else f"{item.kind} a quantized ONNX graph"
            problems.append(
                (("passes", index, "kind"), f"cannot {what} (pass {quantized_at} quantizes); put quantization last")
            )
        elif item.kind == "quantize":
            quantized_at = index
    return problems


# --- zoo arithmetic (pure) ---------------------------------------------------------------------


def zoo_parameters(spec: ZooSpec, num_features: int, num_classes: int) -> int:
    """Parameters of ``training.zoo.build_model(spec, num_features, num_classes)``, counted from
    the spec alone."""
    if isinstance(spec, MLPSpec):
        widths = [num_features, *spec.hidden, num_classes]
        return sum((a + 1) * b for a, b in itertools.pairwise(widths))
    if isinstance(spec, CNNSpec):
        side = image_side((num_features,))
        if side is None:
            raise ValueError(f"a cnn needs a square number of features, got {num_features}")
        total, in_channels = 0, 1
        for channels in spec.channels:
            total += channels * in_channels * spec.kernel_size**2 + channels
            if side >= 4:
                side //= 2
            in_channels = channels
        return total + (in_channels * side * side + 1) * num_classes
    d, ff = spec.d_model, spec.ff_dim
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d)
    return 2 * num_features * d + spec.layers * block + 2 * d + d * num_classes + num_classes


def remaining_channels(size: int, amount: float) -> int:
    """Channels left when structured pruning removes ``amount`` of ``size`` (as
    ``compression.prune.remaining_after``: rounded, never fewer than one)."""
    return max(1, size - round(amount * size))


def after_structured_prune(spec: ZooSpec, amount: float) -> ZooSpec:
    """The zoo spec a structurally pruned model of ``spec`` ends up with."""
    if isinstance(spec, MLPSpec):
        return spec.model_copy(update={"hidden": [remaining_channels(h, amount) for h in spec.hidden]})
    if isinstance(spec, CNNSpec):
        return spec.model_copy(update={"channels": [remaining_channels(c, amount) for c in spec.channels]})
    raise ValueError("structured pruning supports the zoo's mlp and cnn")


def state_dict_classes(tensors: dict[str, Any]) -> int | None:
    """The number of outputs of a zoo state dict (safetensors header: ``{name: {"shape"}}``): the
    rows of the last block's 2-D weight, blocks being numbered ``0.``, ``1.``..."""
    blocks: dict[int, list[tuple[str, list[int]]]] = {}
    for name, info in tensors.items():
        head, _, _ = name.partition(".")
        if head.isdigit():
            blocks.setdefault(int(head), []).append((name, list(info["shape"])))
    if not blocks:
        return None
    weights = [shape for name, shape in blocks[max(blocks)] if name.endswith("weight") and len(shape) == 2]
    return weights[-1][0] if len(weights) == 1 else None


# --- facts about the source, and checks against them (pure) ------------------------------------


@dataclass(frozen=True)
class SourceFacts:
    """What the platform knows about a spec's source before anything runs.

    ``zoo`` is the architecture when the weights are at hand (a model version trained or
    compressed by the platform, or a .safetensors with its arch); None means an ONNX graph only.
    ``features``/``classes`` are set when the model maps ``[batch, features]`` to
    ``[batch, classes]``; ``inputs`` is the ONNX signature's inputs when known; ``task`` is what
    its first output holds (``task_of_output``).
    """

    describe: str
    zoo: ZooSpec | None
    features: int | None
    classes: int | None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    default_dataset: DataSpec | None = None
    classes_list: list[Any] | None = None
    task: Task = "classification"


def task_of_output(datatype: str | None, shape: Sequence[int] | None) -> Task:
    """``regression`` for a first output that is floating point with one value per row
    (``[batch]`` or ``[batch, 1]``: top-1 accuracy means nothing there); else ``classification``
    (class scores, or predicted labels as integers)."""
    one_value = shape is not None and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
    return "regression" if datatype in FLOAT_DATATYPES and one_value else "classification"


def signature_task(signature: Mapping[str, Any]) -> Task:
    """The task of a model from its signature (``core.onnx_signature``): its first output's."""
    outputs = signature.get("outputs") or []
    return task_of_output(outputs[0].get("datatype"), outputs[0].get("shape")) if outputs else "classification"


def check_against_source(spec: CompressionSpec, facts: SourceFacts) -> list[FieldProblem]:
    """Passes that do not apply to the source: pruning or distilling an ONNX graph, structured
    pruning of an architecture it cannot shrink, a student not smaller than its teacher or
    unfit for the features, fine-tuning without training data; and options of the other task
    (a classifier's accuracy floor for a regression model, training on class labels, and the
    other way round)."""
    problems: list[FieldProblem] = _floor_problems(spec.accuracy_floor, facts)
    zoo = facts.zoo
    for index, item in enumerate(spec.passes):
        at = f"/passes/{index}"
        if item.kind == "quantize":
            continue
        if zoo is None:
            problems.append({"pointer": f"{at}/kind", "detail": _needs_weights(item.kind, facts)})
            continue
        if facts.task == "regression" and (problem := _class_label_training(item, facts, at)) is not None:
            problems.append(problem)
            continue
        if isinstance(item, PruneSpec):
            if item.structured and not isinstance(zoo, MLPSpec | CNNSpec):
                problems.append(
                    {
                        "pointer": f"{at}/structured",
                        "detail": f"structured pruning supports the zoo's mlp and cnn; pass {index} gets a {zoo.arch}",
                    }
                )
            elif item.structured:
                zoo = after_structured_prune(zoo, item.amount)
        else:
            problems += _student_problems(item, zoo, facts, at)
            zoo = item.student
    if _trains(spec) and spec.dataset is None and facts.default_dataset is None:
        index = next(i for i, p in enumerate(spec.passes) if _pass_trains(p))
        problems.append(
            {
                "pointer": "/dataset",
                "detail": f"pass {index} ({spec.passes[index].kind}) trains on labelled rows: give a dataset "
                "(the source has none the platform knows of)",
            }
        )
    return problems


CLASSIFIER_FLOORS = ("max_drop", "min_accuracy")
REGRESSION_FLOORS = ("max_mae_increase",)


def _floor_problems(floor: AccuracyFloor, facts: SourceFacts) -> list[FieldProblem]:
    """Floor fields of the other task, given with a value (defaults and nulls are fine)."""
    regression = facts.task == "regression"
    foreign = CLASSIFIER_FLOORS if regression else REGRESSION_FLOORS
    given = [name for name in foreign if name in floor.model_fields_set and getattr(floor, name) is not None]
    if regression:
        detail = (
            f"{facts.describe} is a regression model (one value per row): it has no accuracy; "
            "its floor is max_mae_increase (with labels) or min_mean_cosine"
        )
    else:
        detail = f"max_mae_increase is a regression model's floor; {facts.describe} is a classifier: "
        detail += "use max_drop or min_accuracy"
    return [{"pointer": f"/accuracy_floor/{name}", "detail": detail} for name in given]


def _class_label_training(item: PruneSpec | DistillSpec, facts: SourceFacts, at: str) -> FieldProblem | None:
    """A pass that would train a regression model with cross entropy on class labels."""
    if isinstance(item, PruneSpec) and item.fine_tune_epochs > 0:
        option, what = "fine_tune_epochs", "fine-tuning trains on class labels"
    elif isinstance(item, DistillSpec) and item.mode != "mse":
        # kd matches class probabilities and labels; a cosine of one value per row is its sign
        option, what = "mode", f"{item.mode} distillation does not fit one value per row; use mse"
    else:
        return None
    return {"pointer": f"{at}/{option}", "detail": f"{facts.describe} is a regression model: {what}"}


def _needs_weights(kind: str, facts: SourceFacts) -> str:
    return (
        f"{kind} needs the model's weights and zoo architecture, but {facts.describe} is an ONNX graph only; "
        "quantize it, or give a .safetensors state dict with its arch"
    )


def _student_problems(item: DistillSpec, teacher: ZooSpec, facts: SourceFacts, at: str) -> list[FieldProblem]:
    if facts.features is None or facts.classes is None:
        return [{"pointer": f"{at}/kind", "detail": f"{facts.describe} does not map [batch, features] to classes"}]
    unfit = model_fit_problems(item.student, (facts.features,))
    if unfit:
        return [{"pointer": f"{at}/student/arch", "detail": unfit[0]["detail"]}]
    student = zoo_parameters(item.student, facts.features, facts.classes)
    teacher_params = zoo_parameters(teacher, facts.features, facts.classes)
    if student >= teacher_params:
        return [
            {
                "pointer": f"{at}/student",
                "detail": f"the student has {student} parameters, {student / teacher_params:.0%} of the teacher's "
                f"{teacher_params}; it must have fewer",
            }
        ]
    return []


def _pass_trains(item: PruneSpec | DistillSpec | QuantizeSpec) -> bool:
    return isinstance(item, DistillSpec) or (isinstance(item, PruneSpec) and item.fine_tune_epochs > 0)


def _trains(spec: CompressionSpec) -> bool:
    return any(_pass_trains(p) for p in spec.passes)


def describe_rows(details: dict[str, Any], label_column: str | None) -> tuple[int, int, bool]:
    """(rows, features per row, has labels) of a dataset file from its stored upload details
    (npz: ``X`` and optionally ``y``; csv/parquet: the label column is ``label_column``, else
    ``label`` when there is one). Raises ``ValueError``."""
    stored = stored_dataset(details)
    if stored.is_table:
        names = stored.column_names
        if label_column is not None and label_column not in names:
            raise ValueError(f"there is no column '{label_column}'; columns are {', '.join(names[:20])}")
        label = label_column or ("label" if "label" in names else None)
        return stored.rows, len(names) - (label is not None), label is not None
    arrays = stored.arrays or {}
    if label_column is not None:
        raise ValueError("an npz file has arrays X and y; label_column is for csv/parquet")
    if "X" not in arrays:
        raise ValueError(f"an npz needs an array X (found {', '.join(sorted(arrays)) or 'none'})")
    shape = arrays["X"].shape
    if len(shape) < 2:
        raise ValueError(f"X must have one row per sample; its shape is {list(shape)}")
    return shape[0], math.prod(shape[1:]), "y" in arrays


def feeds_named_inputs(inputs: Sequence[Any], arrays: Collection[str], mapping: Mapping[str, str] | None) -> bool:
    """Whether an npz with ``arrays`` feeds the model's ``inputs`` (its signature's) array by
    array, by the rules of ``core.input_feeds``, rather than as flat rows of ``X``: always with a
    mapping, never when the inputs are unknown (a zoo model takes ``X``), and for one input
    unless the file has an ``X``."""
    if mapping:
        return True
    if not inputs:
        return False
    return not (len(inputs) == 1 and SINGLE_INPUT_ARRAY in arrays)


def named_feed(
    inputs: Sequence[Mapping[str, Any]], arrays: Mapping[str, StoredArray], data: DataSpec, pointer: str
) -> tuple[NpzFeed, bool]:
    """How the npz ``arrays`` feed the model's named ``inputs``, and whether it has labels
    (``y``, fed to no input); :class:`core.input_feeds.FeedError` under ``pointer`` when they do
    not fit. The same check runs on stored upload details and on a file's arrays once read."""
    if data.label_column is not None:
        raise FeedError(f"{pointer}/label_column", f"an npz holds its labels in an array '{LABELS_ARRAY}'")
    feed = npz_feed(inputs, arrays, data.inputs, data_pointer=pointer, model_pointer="/source")
    if feed.rows < 1:
        raise FeedError(f"{pointer}/file_id", "the file has no rows")
    return feed, LABELS_ARRAY in arrays and LABELS_ARRAY not in feed.arrays.values()


def check_data_fits(
    spec: CompressionSpec, facts: SourceFacts, details: dict[str, dict[str, Any] | None]
) -> list[FieldProblem]:
    """Where the data files (their stored details by spec pointer, e.g. ``/eval``,
    ``/dataset``, ``/passes/2/calibration``) do not fit the source model's inputs. An ONNX
    source whose signature is unknown is checked on the worker, once its graph is read."""
    problems: list[FieldProblem] = []
    for pointer, data, need_labels in _data_refs(spec):
        found = BUILTIN_DETAILS[data.builtin] if data.builtin else details.get(pointer)
        if found is None:
            continue
        try:
            problem = _file_problem(pointer, data, facts, found, need_labels)
        except ValueError as exc:
            problem = {"pointer": _file_pointer(pointer, data), "detail": str(exc)}
        if problem is not None:
            problems.append(problem)
    return problems


def _file_problem(
    pointer: str, data: DataSpec, facts: SourceFacts, found: dict[str, Any], need_labels: bool
) -> FieldProblem | None:
    stored = stored_dataset(found) if data.file_id else None
    if (
        stored is not None
        and not stored.is_table
        and feeds_named_inputs(facts.inputs, stored.arrays or {}, data.inputs)
    ):
        return _named_problem(pointer, data, facts, stored.arrays or {}, need_labels)
    if data.inputs is not None:
        detail = "inputs map the arrays of an .npz to a model's named inputs; this file is a table"
        return {"pointer": f"{pointer}/inputs", "detail": detail}
    if facts.zoo is None and not facts.inputs:
        return None  # an ONNX graph whose inputs are not known yet: checked on the worker
    return _rows_problem(pointer, data, facts, found, need_labels)


def _named_problem(
    pointer: str, data: DataSpec, facts: SourceFacts, arrays: Mapping[str, StoredArray], need_labels: bool
) -> FieldProblem | None:
    if not facts.inputs:
        if facts.zoo is not None:
            detail = f"{facts.describe} takes rows of an array X; inputs map arrays to an ONNX graph's named inputs"
            return {"pointer": f"{pointer}/inputs", "detail": detail}
        return None  # checked on the worker, once the graph's inputs are read
    try:
        _, labelled = named_feed(facts.inputs, arrays, data, pointer)
    except FeedError as exc:
        return exc.problem
    if need_labels and not labelled:
        return {"pointer": _file_pointer(pointer, data), "detail": f"training needs labels (an array {LABELS_ARRAY})"}
    return None


def _rows_problem(
    pointer: str, data: DataSpec, facts: SourceFacts, found: dict[str, Any], need_labels: bool
) -> FieldProblem | None:
    rows, features, labelled = describe_rows(found, data.label_column)
    problem = _fit_problem(pointer, data, facts, rows, features)
    if problem is None and need_labels and not labelled:
        problem = {"pointer": _file_pointer(pointer, data), "detail": "training needs labels (y or label_column)"}
    return problem


def _data_refs(spec: CompressionSpec) -> list[tuple[str, DataSpec, bool]]:
    refs: list[tuple[str, DataSpec, bool]] = [("/eval", spec.eval, False)]
    if spec.dataset is not None:
        refs.append(("/dataset", spec.dataset, _trains(spec)))
    for index, item in enumerate(spec.passes):
        if isinstance(item, QuantizeSpec) and item.calibration is not None and item.calibration.data is not None:
            refs.append((f"/passes/{index}/calibration", item.calibration.data, False))
    return refs


def _file_pointer(pointer: str, data: DataSpec) -> str:
    return f"{pointer}/{'file_id' if data.file_id else 'builtin'}"


def _fit_problem(pointer: str, data: DataSpec, facts: SourceFacts, rows: int, features: int) -> FieldProblem | None:
    what = "calibration rows" if "calibration" in pointer else "rows"
    expected = facts.features if facts.features is not None else _fixed_input_elements(facts.inputs)
    if rows < 1:
        return {"pointer": _file_pointer(pointer, data), "detail": "the file has no rows"}
    if expected is not None and features != expected:
        return {
            "pointer": _file_pointer(pointer, data),
            "detail": f"the {what} have {features} values each; {facts.describe} takes {expected} "
            f"(input shape {_input_shapes(facts.inputs)})",
        }
    if expected is None and len(facts.inputs) != 1:
        return {
            "pointer": _file_pointer(pointer, data),
            "detail": f"{facts.describe} has inputs {_input_shapes(facts.inputs)}; "
            "a dataset file feeds models with one input",
        }
    return None


def _fixed_input_elements(inputs: list[dict[str, Any]]) -> int | None:
    """Values per row of a single input whose dims after the batch are all fixed."""
    if len(inputs) != 1 or not inputs[0].get("shape"):
        return None
    rest = inputs[0]["shape"][1:]
    return math.prod(rest) if all(isinstance(d, int) and d > 0 for d in rest) else None


def _input_shapes(inputs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i['name']} {i.get('shape')}" for i in inputs) or "unknown"


# --- error locations ---------------------------------------------------------------------------


def _untagged(error: Any) -> InitErrorDetails:
    """The same error without the union tags pydantic puts in locations
    (``passes.0.prune.amount``, ``passes.1.distill.student.cnn.channels``)."""
    loc = tuple(error["loc"])
    kept: list[str | int] = []
    for part in loc:
        previous = kept[-1] if kept else None
        if part in PASS_KINDS and isinstance(previous, int) and kept[:1] == ["passes"] and len(kept) == 2:
            continue
        if part in ARCH_TAGS and previous in ("student", "arch"):
            continue
        kept.append(part)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kept.append("arch" if kept and kept[-1] in ("student", "arch") else "kind")
        if kept[-2:] == ["arch", "arch"]:
            kept.pop()
    return relocated(error, tuple(kept))
