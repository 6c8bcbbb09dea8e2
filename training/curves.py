"""Loss and accuracy (a regression head: MAE) curves of a run, drawn to a PNG with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen before this import


def draw_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """``history`` holds training points ``{"kind": "train", "epoch", "loss", "accuracy"}``
    and validation points ``{"kind": "val", "epoch", "loss", "accuracy"}``; a regression
    head's points hold ``mae`` instead of ``accuracy`` (and its loss is the squared error)."""
    regression = any("mae" in p for p in history)
    second = "mae" if regression else "accuracy"
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("train", "-"), ("val", "o-")):
        points = [p for p in history if p["kind"] == kind]
        epochs = [p["epoch"] for p in points]
        loss_axes.plot(epochs, [p["loss"] for p in points], style, label=kind)
        accuracy_axes.plot(epochs, [p[second] for p in points], style, label=kind)
    loss_axes.set(xlabel="epoch", ylabel="squared error" if regression else "cross-entropy loss", title="loss")
    if regression:
        accuracy_axes.set(xlabel="epoch", ylabel="mean absolute error", title="MAE")
    else:
        accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
