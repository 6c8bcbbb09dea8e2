"""Side-by-side speed of ONNX models under the same ONNX Runtime thread settings.

Owns: timing several models on one feed in short interleaved rounds (the order rotating each
round) and stating each model's speed relative to a reference as the median, over rounds, of the
ratio measured within the round. A neighbour that steals the CPU for a while then slows both
sides of a ratio alike; absolute numbers still depend on the machine's load.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compression.fidelity import make_session


@dataclass(frozen=True)
class RelativeSpeed:
    batch_size: int
    intra_op_threads: int
    items_per_s: float
    """Median over rounds."""
    best_items_per_s: float
    """Fastest round: the least disturbed by other load."""
    batch_ms: float
    rounds: int
    ratio_to_reference: float
    """Median over rounds of (reference time / this model's time) within the round; > 1 is faster."""

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def round_robin(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: rotated by one each time, so no model always runs first."""
    count = len(names)
    return [[names[(start + i) % count] for i in range(count)] for start in range(rounds)]


def paired_ratios(seconds: Mapping[str, Sequence[float]], reference: str) -> dict[str, float]:
    """Per model, the median over rounds of ``reference``'s time over the model's in that round."""
    base = seconds[reference]
    return {
        name: statistics.median(ref / own for ref, own in zip(base, times, strict=True))
        for name, times in seconds.items()
    }


def compare_speed(
    models: Mapping[str, str | Path],
    feed: Mapping[str, np.ndarray],
    *,
    intra_op_threads: int,
    reference: str | None = None,
    rounds: int = 15,
    runs_per_round: int = 2,
    warmup_runs: int = 3,
) -> dict[str, RelativeSpeed]:
    """Speed of each model on ``feed``; ratios against ``reference`` (default: the first model)."""
    names = list(models)
    reference = reference or names[0]
    sessions = {name: make_session(path, intra_op_threads=intra_op_threads) for name, path in models.items()}
    feeds = {name: _feed_for(session, feed) for name, session in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup_runs):
            session.run(None, feeds[name])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for order in round_robin(names, rounds):
        for name in order:
            start = time.perf_counter()
            for _ in range(runs_per_round):
                sessions[name].run(None, feeds[name])
            seconds[name].append((time.perf_counter() - start) / runs_per_round)
    ratios = paired_ratios(seconds, reference)
    batch_size = int(next(iter(feed.values())).shape[0])
    return {
        name: RelativeSpeed(
            batch_size=batch_size,
            intra_op_threads=intra_op_threads,
            items_per_s=batch_size / statistics.median(times),
            best_items_per_s=batch_size / min(times),
            batch_ms=statistics.median(times) * 1000.0,
            rounds=rounds,
            ratio_to_reference=ratios[name],
        )
        for name, times in seconds.items()
    }


def _feed_for(session: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    return {name: array for name, array in feed.items() if name in wanted}
