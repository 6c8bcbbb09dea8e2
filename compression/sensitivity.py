"""A measured int8 scheme: how strongly to smooth, and which nodes stay float, under a byte budget.

Owns: the choices that turn a float model into an int8 one that keeps its outputs, each made by
building real quantized models and comparing their outputs with the float model's on
calibration data; no node name or setting is picked by hand.

1. ``search_smoothing_alpha``: the SmoothQuant strength (or none) whose fully quantized model
   measures best.
2. ``search_float_nodes``: each quantizable node's sensitivity is probed, the nodes are ranked by
   fidelity gained per byte spent keeping them float, and a greedy loop protects them in that
   order, keeping each one only if a measured model confirms the gain and the file stays within
   the budget. Probes: ``leave_one_out`` (quantize everything but the node: its gain in the fully
   quantized context, where errors compound) or ``quantize_one`` (only the node: its error alone).
3. ``int8_within_budget``: both, after ORT's pre-processing, from a float file to an int8 file.

The searches need only a ``build`` and an ``evaluate`` callable, so they work for any recipe
(dynamic or static int8) and any model.

Example::

    result = int8_within_budget("model.onnx", "model.int8.onnx", calibration_batches,
                                workdir=Path("work"), budget_ratio=0.30, intra_op_threads=2)
    result.as_dict()  # alpha probes, per-node sensitivities, search steps, bytes
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from compression.fidelity import Fidelity, compare_outputs, make_session, run_batches
from compression.quantize import ArrayCalibrationReader, Int8Recipe, WeightNode, build_int8, preprocess, weight_nodes
from compression.smoothing import channel_absmax, smooth_onnx, smoothable_groups

Builder = Callable[[Sequence[str], Path], Path]
"""Builds a quantized model with the given nodes kept float, at the given path; returns it."""
Evaluator = Callable[[Path], Fidelity]
"""Measures a model's outputs against the float reference."""
ProbeMethod = Literal["leave_one_out", "quantize_one"]


@dataclass(frozen=True)
class FidelityTarget:
    mean_cosine: float = 0.995
    min_cosine: float = 0.98

    def met_by(self, fidelity: Fidelity) -> bool:
        return fidelity.meets(mean_cosine=self.mean_cosine, min_cosine=self.min_cosine)

    def loss(self, fidelity: Fidelity) -> float:
        """The binding constraint's distance from perfect, scaled by its allowance (≤ 1.0: target met).

        The max, not a sum: the worst row's cosine moves up and down by chance from one probe to
        the next, and should rank nodes only when it is the constraint that binds.
        """
        mean_term = (1.0 - fidelity.mean_cosine) / max(1.0 - self.mean_cosine, 1e-9)
        min_term = (1.0 - fidelity.min_cosine) / max(1.0 - self.min_cosine, 1e-9)
        return max(mean_term, min_term)


@dataclass(frozen=True)
class Probe:
    float_nodes: tuple[str, ...]
    fidelity: Fidelity
    bytes: int
    loss: float


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    weight_elements: int
    gain: float
    """Loss removed by keeping this node float (leave_one_out) or caused by quantizing it alone."""
    extra_bytes: int
    """Bytes the file grows by when this node stays float."""
    probe: Probe

    @property
    def gain_per_mb(self) -> float:
        return self.gain / max(self.extra_bytes, 1) * 1e6


@dataclass(frozen=True)
class SearchStep:
    node: str
    accepted: bool
    reason: str
    probe: Probe | None


@dataclass
class SearchResult:
    float_nodes: tuple[str, ...]
    fidelity: Fidelity
    bytes: int
    budget_bytes: int
    met_target: bool
    baseline: Probe
    sensitivities: list[NodeSensitivity]
    steps: list[SearchStep] = field(default_factory=list)
    path: Path | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "float_nodes": list(self.float_nodes),
            "fidelity": self.fidelity.as_dict(),
            "bytes": self.bytes,
            "budget_bytes": self.budget_bytes,
            "met_target": self.met_target,
            "baseline": _probe_dict(self.baseline),
            "sensitivities": [
                {
                    "node": s.node,
                    "op_type": s.op_type,
                    "weight_elements": s.weight_elements,
                    "gain": s.gain,
                    "extra_bytes": s.extra_bytes,
                    "fidelity": s.probe.fidelity.as_dict(),
                }
                for s in self.sensitivities
            ],
            "steps": [
                {"node": s.node, "accepted": s.accepted, "reason": s.reason, "probe": _probe_dict(s.probe)}
                for s in self.steps
            ],
        }


def _probe_dict(probe: Probe | None) -> dict[str, object] | None:
    if probe is None:
        return None
    data = asdict(probe)
    data["float_nodes"] = list(probe.float_nodes)
    return data


# ---------------------------------------------------------------- measuring


def probe(build: Builder, evaluate: Evaluator, float_nodes: Iterable[str], dst: Path, target: FidelityTarget) -> Probe:
    """Build, measure and delete one candidate model (builds are deterministic: the chosen one is rebuilt)."""
    nodes = tuple(float_nodes)
    path = build(nodes, dst)
    try:
        fidelity = evaluate(path)
        size = path.stat().st_size
    finally:
        path.unlink(missing_ok=True)
    return Probe(nodes, fidelity, size, target.loss(fidelity))


def measure_sensitivity(
    build: Builder,
    evaluate: Evaluator,
    candidates: Sequence[WeightNode],
    workdir: Path,
    *,
    method: ProbeMethod = "leave_one_out",
    target: FidelityTarget = FidelityTarget(),
    progress: Callable[[str], None] | None = None,
    baseline: Probe | None = None,
) -> tuple[Probe, list[NodeSensitivity]]:
    """The fully quantized baseline and one measured probe per candidate node."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in candidates]
    if baseline is None:
        baseline = probe(build, evaluate, (), workdir / "baseline.onnx", target)
    if method == "quantize_one":
        everything_float = probe(build, evaluate, names, workdir / "all_float.onnx", target)
    sensitivities: list[NodeSensitivity] = []
    for index, candidate in enumerate(candidates):
        dst = workdir / f"probe_{index}.onnx"
        if method == "leave_one_out":
            measured = probe(build, evaluate, (candidate.name,), dst, target)
            gain = baseline.loss - measured.loss
            extra = measured.bytes - baseline.bytes
        else:
            others = [name for name in names if name != candidate.name]
            measured = probe(build, evaluate, others, dst, target)
            gain = measured.loss - everything_float.loss
            extra = everything_float.bytes - measured.bytes
        sensitivities.append(
            NodeSensitivity(candidate.name, candidate.op_type, candidate.weight_elements, gain, extra, measured)
        )
        if progress:
            progress(
                f"{candidate.name}: gain {gain:+.4f}, +{extra} bytes, mean cos {measured.fidelity.mean_cosine:.5f}"
            )
    return baseline, sensitivities


# ---------------------------------------------------------------- choosing (pure)


def plan_protection(sensitivities: Sequence[NodeSensitivity], *, available_bytes: int) -> list[NodeSensitivity]:
    """Nodes worth trying, best fidelity gain per byte first; those that cannot fit or gain nothing dropped."""
    useful = [s for s in sensitivities if s.gain > 0 and s.extra_bytes <= available_bytes]
    return sorted(useful, key=lambda s: (-s.gain_per_mb, -s.gain, s.node))


def budget_from_ratio(reference_bytes: int, ratio: float) -> int:
    return int(reference_bytes * ratio)


# ---------------------------------------------------------------- searching


def search_float_nodes(
    build: Builder,
    evaluate: Evaluator,
    candidates: Sequence[WeightNode],
    *,
    budget_bytes: int,
    workdir: Path,
    target: FidelityTarget = FidelityTarget(),
    method: ProbeMethod = "leave_one_out",
    stop_at_target: bool = True,
    max_float_nodes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Greedy, measured protection of the most sensitive nodes within ``budget_bytes``.

    Each step builds the model with one more node float and keeps that node only if the measured
    loss drops and the file fits the budget. Stops at the target (when ``stop_at_target``), when
    the plan runs out, or at ``max_float_nodes``. The chosen model is left at ``workdir/chosen.onnx``.
    When the fully quantized model already meets the target, no node is probed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    baseline = probe(build, evaluate, (), workdir / "baseline.onnx", target)
    sensitivities: list[NodeSensitivity] = []
    if not (stop_at_target and target.met_by(baseline.fidelity)):
        baseline, sensitivities = measure_sensitivity(
            build, evaluate, candidates, workdir, method=method, target=target, progress=progress, baseline=baseline
        )
    current = baseline
    steps: list[SearchStep] = []
    for index, item in enumerate(plan_protection(sensitivities, available_bytes=budget_bytes - baseline.bytes)):
        if stop_at_target and target.met_by(current.fidelity):
            break
        if max_float_nodes is not None and len(current.float_nodes) >= max_float_nodes:
            break
        if current.bytes + item.extra_bytes > budget_bytes:
            steps.append(SearchStep(item.node, False, "over budget (estimated)", None))
            continue
        trial = probe(build, evaluate, (*current.float_nodes, item.node), workdir / f"step_{index}.onnx", target)
        if trial.bytes > budget_bytes:
            accepted, reason = False, "over budget (measured)"
        elif trial.loss >= current.loss:
            accepted, reason = False, "no measured gain"
        else:
            accepted, reason = True, "kept float"
        steps.append(SearchStep(item.node, accepted, reason, trial))
        if progress:
            progress(
                f"step {item.node}: {reason}; mean {trial.fidelity.mean_cosine:.5f} min {trial.fidelity.min_cosine:.5f}"
            )
        if accepted:
            current = trial
    chosen = build(current.float_nodes, workdir / "chosen.onnx")
    return SearchResult(
        float_nodes=current.float_nodes,
        fidelity=current.fidelity,
        bytes=chosen.stat().st_size,
        budget_bytes=budget_bytes,
        met_target=target.met_by(current.fidelity) and current.bytes <= budget_bytes,
        baseline=baseline,
        sensitivities=sensitivities,
        steps=steps,
        path=chosen,
    )


# ---------------------------------------------------------------- adapters for ONNX models


def recipe_builder(
    src: Path,
    recipe: Int8Recipe,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> Builder:
    """A ``Builder`` for ``build_int8`` on a pre-processed model."""
    reader = ArrayCalibrationReader(calibration) if calibration is not None else None

    def build(float_nodes: Sequence[str], dst: Path) -> Path:
        return build_int8(src, dst, recipe, float_nodes=float_nodes, calibration=reader)

    return build


def onnx_evaluator(
    reference: np.ndarray,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    intra_op_threads: int,
    output: str | None = None,
) -> Evaluator:
    """An ``Evaluator`` comparing a model's outputs on ``batches`` with ``reference``."""

    def evaluate(path: Path) -> Fidelity:
        session = make_session(path, intra_op_threads=intra_op_threads)
        return compare_outputs(reference, run_batches(session, batches, output=output))

    return evaluate


# ---------------------------------------------------------------- smoothing strength, by measurement

DEFAULT_ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.6, 0.7, 0.8, 0.9)
# nodes kept float store fp16 weights: a third of fp32's extra bytes, and the same fp32 arithmetic
DEFAULT_RECIPE = Int8Recipe(float_weights="fp16")


@dataclass(frozen=True)
class AlphaProbe:
    alpha: float | None
    """None: no smoothing."""
    fidelity: Fidelity
    bytes: int
    loss: float


def search_smoothing_alpha(
    src: Path,
    build_from: Callable[[Path], Builder],
    evaluate: Evaluator,
    calibration: Sequence[Mapping[str, np.ndarray]],
    workdir: Path,
    *,
    alphas: Sequence[float | None] = DEFAULT_ALPHAS,
    target: FidelityTarget = FidelityTarget(),
    intra_op_threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[AlphaProbe, Path, list[AlphaProbe]]:
    """The smoothing strength whose fully quantized model measures best on ``calibration``.

    ``build_from(model)`` gives the builder for a (smoothed) float model. Returns the best probe,
    the smoothed float model it came from (``src`` itself for no smoothing) and every probe.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    groups = smoothable_groups(model)
    peaks = channel_absmax(model, [g.activation for g in groups], calibration, intra_op_threads=intra_op_threads)
    probes: list[tuple[AlphaProbe, Path]] = []
    for alpha in alphas:
        float_model = src
        if alpha is not None:
            float_model = workdir / f"smoothed_{alpha:g}.onnx"
            smooth_onnx(src, float_model, calibration, alpha=alpha, peaks=peaks)
        measured = probe(build_from(float_model), evaluate, (), workdir / "alpha_probe.onnx", target)
        probes.append((AlphaProbe(alpha, measured.fidelity, measured.bytes, measured.loss), float_model))
        if progress:
            progress(f"alpha {alpha}: mean {measured.fidelity.mean_cosine:.5f} min {measured.fidelity.min_cosine:.5f}")
    best, best_model = min(probes, key=lambda pair: pair[0].loss)
    return best, best_model, [p for p, _ in probes]


# ---------------------------------------------------------------- the whole scheme


@dataclass
class BudgetedInt8:
    """An int8 model chosen by measurement: smoothing strength, then float nodes, within a budget."""

    path: Path
    recipe: Int8Recipe
    reference_bytes: int
    budget_bytes: int
    symbolic_shapes: bool
    alpha: AlphaProbe
    alpha_probes: list[AlphaProbe]
    search: SearchResult

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size

    def as_dict(self) -> dict[str, object]:
        return {
            "recipe": self.recipe.describe(),
            "reference_bytes": self.reference_bytes,
            "budget_bytes": self.budget_bytes,
            "bytes": self.bytes,
            "symbolic_shapes": self.symbolic_shapes,
            "smoothing_alpha": self.alpha.alpha,
            "alpha_probes": [
                {"alpha": p.alpha, "bytes": p.bytes, "loss": p.loss, **p.fidelity.as_dict()} for p in self.alpha_probes
            ],
            "node_search": self.search.as_dict(),
        }


def int8_within_budget(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    *,
    workdir: Path,
    budget_ratio: float = 0.30,
    target: FidelityTarget = FidelityTarget(),
    recipe: Int8Recipe = DEFAULT_RECIPE,
    alphas: Sequence[float | None] = DEFAULT_ALPHAS,
    method: ProbeMethod = "leave_one_out",
    intra_op_threads: int = 1,
    output: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BudgetedInt8:
    """Pre-process, pick the smoothing strength, then keep the most sensitive nodes float.

    Every choice is measured against ``src``'s own outputs on ``calibration``; the file must stay
    within ``budget_ratio`` of ``src``'s bytes. The result lands at ``dst``.
    """
    src, dst = Path(src), Path(dst)
    workdir.mkdir(parents=True, exist_ok=True)
    reference_bytes = src.stat().st_size
    budget = budget_from_ratio(reference_bytes, budget_ratio)
    pre = preprocess(src, workdir / "preprocessed.onnx", optimize=recipe.mode == "static")
    reference = run_batches(src, calibration, output=output, intra_op_threads=intra_op_threads)
    evaluate = onnx_evaluator(reference, calibration, intra_op_threads=intra_op_threads, output=output)

    def build_from(model: Path) -> Builder:
        return recipe_builder(model, recipe, calibration if recipe.mode == "static" else None)

    best_alpha, float_model, alpha_probes = search_smoothing_alpha(
        pre.path,
        build_from,
        evaluate,
        calibration,
        workdir / "alpha",
        alphas=alphas,
        target=target,
        intra_op_threads=intra_op_threads,
        progress=progress,
    )
    candidates = weight_nodes(float_model, recipe.op_types, const_only=recipe.mode == "dynamic")
    search = search_float_nodes(
        build_from(float_model),
        evaluate,
        candidates,
        budget_bytes=budget,
        workdir=workdir / "nodes",
        target=target,
        method=method,
        progress=progress,
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(search.path, dst)  # type: ignore[arg-type]  # search_float_nodes always sets path; the field is optional
    return BudgetedInt8(dst, recipe, reference_bytes, budget, pre.symbolic_shapes, best_alpha, alpha_probes, search)
