"""The compression report: rows, the changes against the source and the previous stage, the
Markdown table and the chart; a regression model's by MAE, RMSE and R²."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compression.fidelity import Fidelity, RegressionErrors
from compression.measure import FileSize, ParameterCounts, Speed
from compression.report import Stage, build_report, changes, markdown, stage_row, write_report


def speed(p50_ms: float, items_per_s: float) -> Speed:
    return Speed(p50_ms, p50_ms * 1.2, items_per_s, 32, 1, 10, 5)


def stage(
    name: str,
    total: int,
    nonzero: int,
    size: tuple[int, int],
    accuracy: float | None,
    cosine: float = 1.0,
    timing: Speed | None = None,
) -> Stage:
    fidelity = Fidelity(rows=100, mean_cosine=cosine, min_cosine=cosine - 0.01, max_abs_error=1 - cosine)
    kind = "source" if name == "source" else name.split(". ")[1]
    return Stage(name, kind, ParameterCounts(total, nonzero), FileSize(*size), accuracy, fidelity, timing)


STAGES = [
    stage("source", 80_000, 80_000, (320_000, 300_000), 0.99, timing=speed(0.20, 40_000)),
    stage("1. prune", 80_000, 16_000, (320_000, 90_000), 0.985, 0.99, speed(0.19, 42_000)),
    stage("2. quantize", 80_000, 16_000, (84_000, 40_000), 0.98, 0.98, speed(0.10, 80_000)),
]


def test_a_row_states_counts_sizes_quality_and_speed() -> None:
    row = stage_row(STAGES[1])
    assert row["parameters"] == 80_000 and row["nonzero_parameters"] == 16_000
    assert row["sparsity"] == pytest.approx(0.8)
    assert (row["onnx_bytes"], row["onnx_gzip_bytes"]) == (320_000, 90_000)
    assert row["accuracy"] == 0.985 and row["mean_cosine"] == 0.99 and row["min_cosine"] == pytest.approx(0.98)
    assert row["latency_p50_ms"] == 0.19 and row["throughput_items_per_s"] == 42_000


def test_changes_are_ratios_points_and_speedups() -> None:
    source, last = stage_row(STAGES[0]), stage_row(STAGES[2])
    change = changes(source, last)
    assert change["parameters_ratio"] == 1.0
    assert change["nonzero_parameters_ratio"] == pytest.approx(0.2)
    assert change["onnx_bytes_ratio"] == pytest.approx(84_000 / 320_000)
    assert change["onnx_gzip_bytes_ratio"] == pytest.approx(40_000 / 300_000)
    assert change["accuracy_change_points"] == pytest.approx(-1.0)
    assert change["accuracy_kept"] == pytest.approx(0.98 / 0.99)
    assert change["latency_speedup"] == pytest.approx(2.0)
    assert change["throughput_ratio"] == pytest.approx(2.0)


def test_changes_without_labels_or_timings_are_none() -> None:
    plain = [stage("source", 10, 10, (100, 90), None), stage("1. quantize", 10, 10, (40, 30), None, 0.99)]
    change = changes(stage_row(plain[0]), stage_row(plain[1]))
    assert change["accuracy_change_points"] is None and change["accuracy_kept"] is None
    assert change["latency_speedup"] is None and change["throughput_ratio"] is None
    assert change["onnx_bytes_ratio"] == pytest.approx(0.4)
    assert build_report(plain)["metric"] == "fidelity"


def test_the_report_compares_every_stage_with_the_source_and_the_previous_one() -> None:
    report = build_report(STAGES, {"job_id": "job_x"})
    assert report["metric"] == "accuracy" and report["meta"] == {"job_id": "job_x"}
    first, second, third = report["stages"]
    assert first["vs_source"]["onnx_bytes_ratio"] == 1.0 and first["vs_source"]["accuracy_change_points"] == 0.0
    assert second["vs_previous"]["nonzero_parameters_ratio"] == pytest.approx(0.2)
    assert third["vs_previous"]["onnx_bytes_ratio"] == pytest.approx(84_000 / 320_000)
    assert third["vs_previous"]["accuracy_change_points"] == pytest.approx(-0.5)
    assert report["overall"] == third["vs_source"]
    with pytest.raises(ValueError):
        build_report([])


def test_the_markdown_table_has_one_row_per_stage_and_the_overall_change() -> None:
    text = markdown(build_report(STAGES, {"notes": ["eval: 359 rows held out"]}))
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(STAGES)
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| 1. prune | 80,000 | 16,000 | 312.5 | 87.9 | 0.9850 |" in text
    assert "- ONNX bytes: 26.2% of the source" in text
    assert "- accuracy change: -1.00 points" in text
    assert "- batch-1 latency speed-up: 2.00x" in text
    assert "- eval: 359 rows held out" in text


def test_the_markdown_table_shows_dashes_for_what_was_not_measured() -> None:
    plain = [stage("source", 10, 10, (100, 90), None), stage("1. quantize", 10, 10, (40, 30), None, 0.99)]
    text = markdown(build_report(plain))
    assert "| 1. quantize | 10 | 10 | 0.0 | 0.0 | - | 0.99000 |" in text
    assert "- accuracy change: - points" in text


def test_write_report_writes_json_markdown_and_a_png(tmp_path: Path) -> None:
    report = build_report(STAGES)
    files = write_report(report, tmp_path / "out")
    assert json.loads(files.json.read_text())["overall"] == json.loads(json.dumps(report["overall"]))
    assert files.markdown.read_text().startswith("# Compression report")
    assert files.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fidelity_only = build_report([stage("source", 10, 10, (100, 90), None), stage("1. prune", 10, 5, (100, 60), None)])
    write_report(fidelity_only, tmp_path / "plain")
    assert (tmp_path / "plain" / "report.png").stat().st_size > 0


def regression_stage(name: str, size: tuple[int, int], mae: float, r2: float) -> Stage:
    fidelity = Fidelity(rows=40, mean_cosine=0.999, min_cosine=0.999, max_abs_error=0.05)
    kind = "source" if name == "source" else name.split(". ")[1]
    errors = RegressionErrors(rows=40, mae=mae, rmse=mae * 1.5, r2=r2)
    return Stage(name, kind, ParameterCounts(100, 100), FileSize(*size), None, fidelity, errors=errors)


REGRESSION = [
    regression_stage("source", (4000, 3600), 0.4, 0.8),
    regression_stage("1. quantize", (1000, 800), 0.42, 0.78),
]


def test_a_regression_models_report_is_judged_by_mae() -> None:
    report = build_report(REGRESSION)
    assert report["metric"] == "mae"
    source, quantized = report["stages"]
    assert quantized["accuracy"] is None
    assert (quantized["mae"], quantized["rmse"], quantized["r2"]) == (0.42, pytest.approx(0.63), 0.78)
    assert report["overall"]["mae_ratio"] == pytest.approx(1.05)
    assert report["overall"]["r2_change"] == pytest.approx(-0.02)
    assert report["overall"]["accuracy_change_points"] is None
    assert source["vs_source"]["mae_ratio"] == 1.0


def test_a_classifiers_report_has_no_regression_numbers() -> None:
    report = build_report(STAGES)
    assert all(row[key] is None for row in report["stages"] for key in ("mae", "rmse", "r2"))
    assert report["overall"]["mae_ratio"] is None and report["overall"]["r2_change"] is None


def test_a_regression_models_markdown_has_mae_rmse_and_r2_columns(tmp_path: Path) -> None:
    report = build_report(REGRESSION)
    text = markdown(report)
    assert "| ONNX KiB | gzip KiB | MAE | RMSE | R² | mean cos |" in text
    assert "| 1. quantize | 100 | 100 | 1.0 | 0.8 | 0.4200 | 0.6300 | 0.7800 | 0.99900 |" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "- MAE: 105.0% of the source's" in text and "- R² change: -0.0200" in text
    assert "accuracy" not in text
    files = write_report(report, tmp_path)
    assert files.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
