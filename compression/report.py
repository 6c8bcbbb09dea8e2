"""The before/after report of a compression run: JSON, a Markdown table and a PNG chart.

Owns: one row per stage (the source, then the model after every pass) with parameters,
non-zero parameters, ONNX bytes raw and gzip-compressed (unstructured zeros only save bytes
once compressed, so both are stated), accuracy on the eval rows (None without labels; a
regression model's MAE, RMSE and R² instead), output fidelity against the source (mean/min
cosine, max abs error), p50/p90 latency at batch 1 and throughput at batch 32; the changes of
each row against the source and the previous stage (ratios, accuracy in points, MAE as a ratio,
R² as a difference, speed-ups); the report's ``metric`` (``accuracy``, ``mae`` or
``fidelity``: what its quality column is); and rendering those. Building the report is pure;
only ``write_report`` and ``draw_chart`` touch files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compression.fidelity import Fidelity, RegressionErrors
from compression.measure import FileSize, ParameterCounts, Speed

REPORT_VERSION = 1
Row = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """A model as measured: the source (``kind`` ``source``) or the result of one pass."""

    name: str
    kind: str
    parameters: ParameterCounts
    size: FileSize
    accuracy: float | None
    fidelity: Fidelity
    speed: Speed | None = None
    options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    errors: RegressionErrors | None = None  # a regression model's, with labels


def stage_row(stage: Stage) -> Row:
    """One flat row of the report."""
    speed, errors = stage.speed, stage.errors
    return {
        "stage": stage.name,
        "kind": stage.kind,
        "parameters": stage.parameters.total,
        "nonzero_parameters": stage.parameters.nonzero,
        "sparsity": stage.parameters.sparsity,
        "onnx_bytes": stage.size.bytes,
        "onnx_gzip_bytes": stage.size.gzip_bytes,
        "accuracy": stage.accuracy,
        "mae": errors.mae if errors else None,
        "rmse": errors.rmse if errors else None,
        "r2": errors.r2 if errors else None,
        "mean_cosine": stage.fidelity.mean_cosine,
        "min_cosine": stage.fidelity.min_cosine,
        "max_abs_error": stage.fidelity.max_abs_error,
        "latency_p50_ms": speed.latency_p50_ms if speed else None,
        "latency_p90_ms": speed.latency_p90_ms if speed else None,
        "throughput_items_per_s": speed.throughput_items_per_s if speed else None,
        "seconds": stage.seconds,
        "options": stage.options,
        "details": stage.details,
    }


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old


def changes(base: Mapping[str, Any], row: Mapping[str, Any]) -> Row:
    """``row`` against ``base``: size ratios (< 1 is smaller), accuracy change in points
    (percentage points, negative is a loss), a regression model's MAE ratio (> 1 is more error)
    and R² change, latency speed-up and throughput ratio (> 1 is faster)."""
    accuracy = None
    if row["accuracy"] is not None and base["accuracy"] is not None:
        accuracy = (row["accuracy"] - base["accuracy"]) * 100.0
    r2 = None
    if row["r2"] is not None and base["r2"] is not None:
        r2 = row["r2"] - base["r2"]
    return {
        "parameters_ratio": _ratio(row["parameters"], base["parameters"]),
        "nonzero_parameters_ratio": _ratio(row["nonzero_parameters"], base["nonzero_parameters"]),
        "onnx_bytes_ratio": _ratio(row["onnx_bytes"], base["onnx_bytes"]),
        "onnx_gzip_bytes_ratio": _ratio(row["onnx_gzip_bytes"], base["onnx_gzip_bytes"]),
        "accuracy_change_points": accuracy,
        "accuracy_kept": _ratio(row["accuracy"], base["accuracy"]),
        "mae_ratio": _ratio(row["mae"], base["mae"]),
        "r2_change": r2,
        "latency_speedup": _ratio(base["latency_p50_ms"], row["latency_p50_ms"]),
        "throughput_ratio": _ratio(row["throughput_items_per_s"], base["throughput_items_per_s"]),
    }


def build_report(stages: Sequence[Stage], meta: Mapping[str, Any] | None = None) -> Row:
    """The report of a run whose first stage is the source."""
    if not stages:
        raise ValueError("a report needs at least the source stage")
    rows = [stage_row(s) for s in stages]
    for index, row in enumerate(rows):
        row["vs_source"] = changes(rows[0], row)
        row["vs_previous"] = changes(rows[index - 1], row) if index else changes(row, row)
    return {
        "version": REPORT_VERSION,
        "metric": report_metric(rows[0]),
        "meta": dict(meta or {}),
        "stages": rows,
        "overall": changes(rows[0], rows[-1]),
    }


def report_metric(row: Mapping[str, Any]) -> str:
    """What the report judges quality by: ``accuracy`` (a classifier with labels), ``mae`` (a
    regression model with labels), else ``fidelity`` (outputs against the source's)."""
    if row["mae"] is not None:
        return "mae"
    return "accuracy" if row["accuracy"] is not None else "fidelity"


# --- rendering ---------------------------------------------------------------------------------


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _kb(value: int) -> str:
    return f"{value / 1024:.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table, one row per stage, then the overall change; a regression
    model's has MAE, RMSE and R² where a classifier's has accuracy."""
    regression = report["metric"] == "mae"
    header = (
        f"| stage | parameters | non-zero | ONNX KiB | gzip KiB | {'MAE | RMSE | R²' if regression else 'accuracy'} "
        "| mean cos | max abs err | p50 ms (b=1) | items/s (b=32) |"
    )
    lines = [
        "# Compression report",
        "",
        header,
        _separator(header),
    ]
    for row in report["stages"]:
        quality = " | ".join(
            _number(row[key], ".4f") for key in (("mae", "rmse", "r2") if regression else ("accuracy",))
        )
        lines.append(
            f"| {row['stage']} | {row['parameters']:,} | {row['nonzero_parameters']:,} "
            f"| {_kb(row['onnx_bytes'])} | {_kb(row['onnx_gzip_bytes'])} "
            f"| {quality} | {row['mean_cosine']:.5f} | {row['max_abs_error']:.3g} "
            f"| {_number(row['latency_p50_ms'], '.3f')} | {_number(row['throughput_items_per_s'], ',.0f')} |"
        )
    overall = report["overall"]
    lines += ["", "Overall, last stage against the source:", ""]
    lines += [f"- {label}: {text}" for label, text in _overall_lines(overall, regression)]
    notes = report.get("meta", {}).get("notes") or []
    if notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _separator(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _overall_lines(overall: Mapping[str, Any], regression: bool) -> list[tuple[str, str]]:
    quality = (
        [
            ("MAE", _number(overall["mae_ratio"], ".1%") + " of the source's"),
            ("R² change", _number(overall["r2_change"], "+.4f")),
        ]
        if regression
        else [("accuracy change", _number(overall["accuracy_change_points"], "+.2f") + " points")]
    )
    return [
        ("parameters", _number(overall["parameters_ratio"], ".1%") + " of the source"),
        ("non-zero parameters", _number(overall["nonzero_parameters_ratio"], ".1%") + " of the source"),
        ("ONNX bytes", _number(overall["onnx_bytes_ratio"], ".1%") + " of the source"),
        ("gzip bytes", _number(overall["onnx_gzip_bytes_ratio"], ".1%") + " of the source"),
        *quality,
        ("batch-1 latency speed-up", _number(overall["latency_speedup"], ".2f") + "x"),
        ("batch-32 throughput", _number(overall["throughput_ratio"], ".2f") + "x"),
    ]


def draw_chart(report: Mapping[str, Any], path: Path) -> None:
    """Four panels over the stages: bytes (raw and gzip), non-zero parameters, accuracy, MAE or
    mean cosine (the report's metric), and batch-1 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the backend must be chosen before this import

    rows = report["stages"]
    names = [row["stage"] for row in rows]
    positions = list(range(len(rows)))
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    size, params, quality, latency = axes.flat
    width = 0.4
    size.bar([p - width / 2 for p in positions], [r["onnx_bytes"] / 1024 for r in rows], width, label="ONNX")
    size.bar([p + width / 2 for p in positions], [r["onnx_gzip_bytes"] / 1024 for r in rows], width, label="gzip")
    size.set(title="file size", ylabel="KiB")
    size.legend()
    params.bar(positions, [r["parameters"] for r in rows], color="lightgray", label="all")
    params.bar(positions, [r["nonzero_parameters"] for r in rows], width, label="non-zero")
    params.set(title="parameters")
    params.legend()
    metric = report["metric"] if report["metric"] in ("accuracy", "mae") else "mean_cosine"
    values = [r[metric] for r in rows]
    quality.bar(positions, values, color="tab:green")
    if metric == "mae":  # an error in the labels' unit: from zero, lower is better
        quality.set(title="MAE (lower is better)", ylim=(0.0, max(values) * 1.1 or 1.0))
    else:
        low = min(values)
        quality.set(title=metric.replace("_", " "), ylim=(max(0.0, low - (1 - low) - 0.01), 1.0))
    latency.bar(positions, [r["latency_p50_ms"] or 0.0 for r in rows], color="tab:orange")
    latency.set(title="p50 latency, batch 1", ylabel="ms")
    for axis in axes.flat:
        axis.set_xticks(positions, names, rotation=20, ha="right")
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle("compression: before → after every pass")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    chart: Path


def write_report(report: Mapping[str, Any], out_dir: Path) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir / "report.json", out_dir / "report.md", out_dir / "report.png")
    files.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    files.markdown.write_text(markdown(report))
    draw_chart(report, files.chart)
    return files
