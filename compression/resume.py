"""A compression run's progress between passes, as one file: what a run saves after each pass
and what a later run resumes from, skipping the passes already done.

Owns: ``Progress`` (the passes done, the stages measured so far, every stage's ONNX file and the
model state after the last pass done), packing it into a tar (a ``manifest.json``, the stage
files, and the torch weights as safetensors while the state has a torch model) and reading it
back. A saved run is only resumed by the same passes: the manifest records each done pass's
options, and a run whose passes differ gets ``ProgressMismatch``. Reading trusts nothing in the
archive: members are extracted with tarfile's ``data`` filter and the weights load through
safetensors (no pickle). Knows nothing of jobs or storage.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from safetensors.torch import save_file

from compression.fidelity import Fidelity, RegressionErrors
from compression.measure import FileSize, ParameterCounts, Speed
from compression.passes import ModelState
from compression.report import Stage
from training.spec import ModelSpec

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class ProgressMismatch(ValueError):
    """A saved progress that this run cannot resume from (other passes, another format, unreadable)."""


@dataclass(frozen=True)
class Progress:
    """The first ``done`` passes of a run: ``stages`` (the source's first, one per pass done),
    ``files`` (each stage's ONNX model, in the same order) and the ``state`` after the last."""

    done: int
    stages: list[Stage]
    files: list[Path]
    state: ModelState


def _stage_json(stage: Stage) -> dict[str, Any]:
    return asdict(stage)


def _stage(data: dict[str, Any]) -> Stage:
    speed, errors = data.get("speed"), data.get("errors")
    return Stage(
        name=data["name"],
        kind=data["kind"],
        parameters=ParameterCounts(**data["parameters"]),
        size=FileSize(**data["size"]),
        accuracy=data["accuracy"],
        fidelity=Fidelity(**data["fidelity"]),
        speed=Speed(**speed) if speed else None,
        options=data.get("options") or {},
        details=data.get("details") or {},
        seconds=data.get("seconds", 0.0),
        errors=RegressionErrors(**errors) if errors else None,
    )


def save_progress(progress: Progress, passes: list[dict[str, Any]], path: Path) -> Path:
    """Write ``progress`` of a run of ``passes`` (each pass's options, as its ``describe()``) to
    the tar ``path``; returns ``path``."""
    state = progress.state
    names = [f"stage-{index}.onnx" for index in range(len(progress.files))]
    manifest = {
        "format": FORMAT,
        "done": progress.done,
        "passes": passes[: progress.done],
        "stages": [_stage_json(s) for s in progress.stages],
        "files": names,
        "state": {
            "parameters": asdict(state.parameters),
            "num_features": state.num_features,
            "zoo": state.zoo.model_dump(mode="json") if state.has_torch and state.zoo is not None else None,
        },
    }
    staging = path.with_name(path.name + ".d")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST).write_text(json.dumps(manifest, default=float))
    weights = None
    if state.has_torch and state.torch_model is not None:
        weights = staging / WEIGHTS
        save_file({k: v.detach().contiguous() for k, v in state.torch_model.state_dict().items()}, str(weights))
    with tarfile.open(path, "w") as tar:
        tar.add(staging / MANIFEST, MANIFEST)
        for name, file in zip(names, progress.files, strict=True):
            tar.add(file, name)
        if weights is not None:
            tar.add(weights, WEIGHTS)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    return path


def load_progress(path: Path, workdir: Path, passes: list[dict[str, Any]]) -> Progress:
    """The progress saved in the tar ``path``, extracted into ``workdir``, for a run of ``passes``
    (``ProgressMismatch`` when it was saved by other passes or cannot be read)."""
    from compression.sources import SourceError, zoo_model

    try:
        with tarfile.open(path) as tar:
            tar.extractall(workdir, filter="data")
        manifest = json.loads((workdir / MANIFEST).read_text())
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise ProgressMismatch(f"the saved progress cannot be read: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ProgressMismatch(f"the saved progress has format {manifest.get('format')!r}, not {FORMAT}")
    done = int(manifest["done"])
    if done < 1 or done > len(passes) or manifest["passes"] != passes[:done]:
        raise ProgressMismatch("the saved progress is of other passes than this run's")
    files = [workdir / name for name in manifest["files"]]
    stages = [_stage(s) for s in manifest["stages"]]
    if len(files) != done + 1 or len(stages) != done + 1 or not all(f.is_file() for f in files):
        raise ProgressMismatch("the saved progress lacks a stage's model")
    saved = manifest["state"]
    parameters, features = ParameterCounts(**saved["parameters"]), saved["num_features"]
    if saved.get("zoo") is None:
        return Progress(done, stages, files, ModelState(files[-1], parameters, features))
    try:
        zoo = TypeAdapter(ModelSpec).validate_python(saved["zoo"])
        model = zoo_model(workdir / WEIGHTS, zoo, int(features))
    except (ValidationError, SourceError, TypeError) as exc:
        raise ProgressMismatch(f"the saved model cannot be rebuilt: {exc}") from exc
    return Progress(done, stages, files, ModelState(files[-1], parameters, features, model, zoo))
