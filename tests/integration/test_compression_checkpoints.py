"""Which checkpoint a compression job resumes from, with the real object store: the newest one
whose stored bytes match its recorded sha256 and that was made by the job's passes. A torn
object (half of it stored, as a killed upload or a damaged store leaves it) or one of other
passes is passed over with a warning, never resumed from; without any, the run starts over."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from compression.fidelity import Fidelity
from compression.measure import ParameterCounts, file_size
from compression.passes import ModelState
from compression.report import Stage
from compression.resume import Progress, save_progress
from compression.spec import CompressionSpec
from core.artifact_store import ArtifactStore
from core.models import Artifact
from job_types.compression import pass_options, resume_point
from tests.support.onnx_models import tiny_onnx

SPEC = CompressionSpec.model_validate(
    {
        "source": {"file_id": "file_01j00000000000000000000000", "arch": {"arch": "mlp", "hidden": [8]}},
        "passes": [{"kind": "prune", "amount": 0.5}, {"kind": "quantize", "mode": "dynamic"}],
        "eval": {"builtin": "digits"},
    }
)


class Checkpoints:
    """The part of a ``JobContext`` that ``resume_point`` reads: the job's checkpoints as rows
    with their recorded data, the real store, and the log lines it writes."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.rows: list[Artifact] = []
        self.data: dict[str, dict[str, Any]] = {}
        self.lines: list[tuple[str, str]] = []
        self.resumed_from: str | None = None

    def add(self, path: Path, passes_done: int) -> Artifact:
        """Upload ``path`` and record it as the next checkpoint, as ``JobRun.checkpoint`` does."""
        key = f"tests/checkpoints/{secrets.token_hex(6)}-{path.name}"
        whole = self.store.upload_file(key, path)
        row = Artifact(id=f"art_{len(self.rows):026d}", name=path.name, storage_key=key, sha256=whole.sha256)
        self.rows.append(row)
        self.data[row.id] = {"artifact_id": row.id, "step": passes_done, "passes_done": passes_done}
        return row

    def checkpoints(self) -> list[Artifact]:
        return list(self.rows)

    def checkpoint_data(self) -> dict[str, dict[str, Any]]:
        return self.data

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self.lines.append((level, message))
        if "resumed_passes" in data:
            self.resumed_from = data["artifact_id"]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    """The progress after the first pass and after both, as tars."""
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx())
    state = ModelState.from_onnx(model)
    fidelity = Fidelity(rows=4, mean_cosine=1.0, min_cosine=1.0, max_abs_error=0.0)
    stage = Stage("source", "source", ParameterCounts(12, 12), file_size(model), None, fidelity)
    passes = pass_options(SPEC)
    one = Progress(1, [stage, stage], [model, model], state)
    two = Progress(2, [stage, stage, stage], [model, model, model], state)
    return save_progress(one, passes, tmp_path / "after-1.tar"), save_progress(two, passes, tmp_path / "after-2.tar")


def test_a_torn_newer_checkpoint_is_passed_over_for_the_older_whole_one(settings, saved, tmp_path):
    after_one, after_two = saved
    ctx = Checkpoints(ArtifactStore(settings))
    good = ctx.add(after_one, 1)
    torn = ctx.add(after_two, 2)
    ctx.store.upload_chunks(torn.storage_key, [after_two.read_bytes()[: after_two.stat().st_size // 2]])

    progress = resume_point(ctx, SPEC, tmp_path / "work")
    assert progress is not None and progress.done == 1
    warnings = [message for level, message in ctx.lines if level == "warning"]
    assert len(warnings) == 1 and torn.name in warnings[0] and "sha256" in warnings[0].lower(), warnings
    assert any("resuming after pass 1" in message for _, message in ctx.lines)
    assert ctx.resumed_from == good.id


def test_a_checkpoint_of_other_passes_or_a_missing_object_means_starting_over(settings, saved, tmp_path):
    after_one, _ = saved
    ctx = Checkpoints(ArtifactStore(settings))
    gone = ctx.add(after_one, 1)
    ctx.store.delete(gone.storage_key)
    other = SPEC.model_copy(update={"passes": [SPEC.passes[0].model_copy(update={"amount": 0.6}), SPEC.passes[1]]})
    ctx.add(after_one, 1)

    assert resume_point(ctx, other, tmp_path / "work") is None
    assert [level for level, _ in ctx.lines] == ["warning", "warning"]
    assert "other passes" in ctx.lines[0][1] and "cannot be fetched" in ctx.lines[1][1]
