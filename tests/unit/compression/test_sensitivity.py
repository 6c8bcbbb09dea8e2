"""The measured float-node search: pure planning, the greedy loop on fakes, and a real small model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from compression.fidelity import Fidelity, compare_outputs, make_session
from compression.quantize import Int8Recipe, WeightNode, build_int8, preprocess, weight_nodes
from compression.sensitivity import (
    FidelityTarget,
    NodeSensitivity,
    Probe,
    int8_within_budget,
    measure_sensitivity,
    onnx_evaluator,
    plan_protection,
    recipe_builder,
    search_float_nodes,
)
from tests.support import compression_models as models


def fidelity(mean: float, minimum: float) -> Fidelity:
    return Fidelity(rows=10, mean_cosine=mean, min_cosine=minimum, max_abs_error=0.0)


def sensitivity(node: str, gain: float, extra: int) -> NodeSensitivity:
    return NodeSensitivity(node, "MatMul", extra, gain, extra, Probe((node,), fidelity(1, 1), 0, 0.0))


def test_target_loss_is_the_binding_constraint() -> None:
    target = FidelityTarget(mean_cosine=0.99, min_cosine=0.9)
    assert target.loss(fidelity(0.995, 0.95)) == pytest.approx(0.5)
    assert target.loss(fidelity(0.98, 0.95)) == pytest.approx(2.0)
    assert target.met_by(fidelity(0.99, 0.9)) and not target.met_by(fidelity(0.99, 0.89))


def test_plan_ranks_by_gain_per_byte_and_drops_what_cannot_help() -> None:
    plan = plan_protection(
        [
            sensitivity("big", gain=1.0, extra=1000),
            sensitivity("small", gain=0.5, extra=100),
            sensitivity("useless", gain=-0.1, extra=10),
            sensitivity("too_big", gain=9.0, extra=5000),
        ],
        available_bytes=2000,
    )
    assert [s.node for s in plan] == ["small", "big"]


class FakeModels:
    """A builder whose file size and fidelity depend only on which nodes stay float."""

    def __init__(self, base_bytes: int, extra: dict[str, int], loss_removed: dict[str, float]) -> None:
        self.base_bytes, self.extra, self.loss_removed = base_bytes, extra, loss_removed
        self.built: dict[Path, tuple[str, ...]] = {}

    def build(self, float_nodes: Sequence[str], dst: Path) -> Path:
        dst.write_bytes(b"\0" * (self.base_bytes + sum(self.extra[n] for n in float_nodes)))
        self.built[dst] = tuple(float_nodes)
        return dst

    def evaluate(self, path: Path) -> Fidelity:
        # mean cosine 0.99 with every node quantized; each float node removes part of the gap
        gap = 0.01 - sum(self.loss_removed[n] for n in self.built[path])
        return fidelity(1.0 - gap, 0.99)


def candidates(names: Sequence[str]) -> list[WeightNode]:
    return [WeightNode(name, "MatMul", f"{name}.w", 100) for name in names]


def test_greedy_search_stops_at_target_within_budget(tmp_path: Path) -> None:
    fake = FakeModels(1000, {"a": 300, "b": 100, "c": 100}, {"a": 0.009, "b": 0.004, "c": 0.004})
    result = search_float_nodes(
        fake.build,
        fake.evaluate,
        candidates(["a", "b", "c"]),
        budget_bytes=1250,
        workdir=tmp_path,
        target=FidelityTarget(mean_cosine=0.997, min_cosine=0.98),
    )
    # "a" gains most but does not fit; "b" and "c" together reach the target
    assert set(result.float_nodes) == {"b", "c"}
    assert result.met_target and result.bytes == 1200 <= result.budget_bytes
    assert [s.node for s in result.steps] == ["b", "c"]


def test_greedy_search_rejects_nodes_without_measured_gain(tmp_path: Path) -> None:
    fake = FakeModels(1000, {"a": 100, "b": 100}, {"a": 0.004, "b": 0.0})
    result = search_float_nodes(
        fake.build, fake.evaluate, candidates(["a", "b"]), budget_bytes=5000, workdir=tmp_path, target=FidelityTarget()
    )
    assert result.float_nodes == ("a",)
    assert not result.met_target


def test_search_protects_the_layer_with_outlier_weights(tmp_path: Path) -> None:
    src = models.mlp(tmp_path / "mlp.onnx", hidden=128, outlier_in_fc2=True)
    pre = preprocess(src, tmp_path / "pre.onnx", optimize=False).path
    calibration = [{"x": models.inputs((64, 16), seed=s)} for s in range(2)]
    session = make_session(src, intra_op_threads=1)
    reference = np.concatenate([session.run(None, feed)[0] for feed in calibration])
    # per-tensor weights: one outlier sets the scale of the whole matrix
    build = recipe_builder(pre, Int8Recipe(per_channel=False))
    evaluate = onnx_evaluator(reference, calibration, intra_op_threads=1)
    all_int8 = build((), tmp_path / "all.onnx").stat().st_size
    fc2 = next(n for n in weight_nodes(pre) if n.name == "fc2")
    budget = all_int8 + 3 * fc2.weight_elements + 1024  # room for fc2 in fp32, not for more
    result = search_float_nodes(build, evaluate, weight_nodes(pre), budget_bytes=budget, workdir=tmp_path / "search")
    assert result.float_nodes == ("fc2",)
    assert result.bytes <= budget
    assert max(result.sensitivities, key=lambda s: s.gain).node == "fc2"
    assert result.baseline.fidelity.mean_cosine < 0.5 < 0.999 < result.fidelity.mean_cosine
    assert result.met_target


def test_search_respects_a_budget_too_small_for_the_sensitive_layer(tmp_path: Path) -> None:
    src = models.mlp(tmp_path / "mlp.onnx", hidden=128, outlier_in_fc2=True)
    pre = preprocess(src, tmp_path / "pre.onnx", optimize=False).path
    calibration = [{"x": models.inputs((64, 16), seed=0)}]
    reference = make_session(src, intra_op_threads=1).run(None, calibration[0])[0]
    build = recipe_builder(pre, Int8Recipe(per_channel=False))
    evaluate = onnx_evaluator(reference, calibration, intra_op_threads=1)
    budget = build((), tmp_path / "all.onnx").stat().st_size + 10_000
    result = search_float_nodes(build, evaluate, weight_nodes(pre), budget_bytes=budget, workdir=tmp_path / "search")
    assert "fc2" not in result.float_nodes
    assert result.bytes <= budget and not result.met_target


def test_whole_scheme_on_a_model_with_outlier_activations(tmp_path: Path) -> None:
    src = models.outlier_activations(tmp_path / "model.onnx")
    calibration = [{"x": models.inputs((64, 64), seed=s)} for s in range(2)]
    result = int8_within_budget(
        src,
        tmp_path / "int8.onnx",
        calibration,
        workdir=tmp_path / "work",
        budget_ratio=0.5,
        target=FidelityTarget(mean_cosine=0.999, min_cosine=0.99),
        alphas=(None, 0.5),
        intra_op_threads=1,
    )
    probes = {p.alpha: p for p in result.alpha_probes}
    assert probes[0.5].loss < probes[None].loss  # smoothing measured better, so it was chosen
    assert result.alpha.alpha == 0.5
    assert result.bytes <= result.budget_bytes
    x = models.inputs((32, 64), seed=9)
    got = make_session(result.path, intra_op_threads=1).run(None, {"x": x})[0]
    expected = make_session(src, intra_op_threads=1).run(None, {"x": x})[0]
    assert compare_outputs(expected, got).mean_cosine > 0.999
    plain = build_int8(
        preprocess(src, tmp_path / "pre.onnx", optimize=False).path, tmp_path / "plain.onnx", Int8Recipe()
    )
    plain_out = make_session(plain, intra_op_threads=1).run(None, {"x": x})[0]
    assert compare_outputs(expected, plain_out).mean_cosine < compare_outputs(expected, got).mean_cosine


def test_quantize_one_probe_ranks_like_leave_one_out_on_additive_errors(tmp_path: Path) -> None:
    fake = FakeModels(1000, {"a": 100, "b": 100, "c": 100}, {"a": 0.001, "b": 0.006, "c": 0.002})
    _, by_removal = measure_sensitivity(fake.build, fake.evaluate, candidates("abc"), tmp_path / "loo")
    _, by_addition = measure_sensitivity(
        fake.build, fake.evaluate, candidates("abc"), tmp_path / "one", method="quantize_one"
    )
    assert [s.node for s in sorted(by_removal, key=lambda s: -s.gain)] == ["b", "c", "a"]
    assert [s.node for s in sorted(by_addition, key=lambda s: -s.gain)] == ["b", "c", "a"]
    assert all(s.extra_bytes == 100 for s in [*by_removal, *by_addition])
