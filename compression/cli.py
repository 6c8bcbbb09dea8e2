"""Compression from the command line, without the service: the same spec checks, passes and
report as a compression job, on local files.

    python -m compression --source model.safetensors --arch '{"arch": "cnn", "channels": [64, 128]}' \\
        --passes passes.json --eval digits.npz --dataset train.npz --out out/
    python -m compression --source model.onnx --passes '[{"kind": "quantize", "mode": "dynamic"}]' \\
        --eval digits --out out/

``--source`` is an ``.onnx`` file (quantization only) or a ``.safetensors`` state dict of the
zoo architecture ``--arch``. ``--passes`` is a JSON file (or inline JSON) holding either the
list of passes or an object with ``passes`` and optionally ``accuracy_floor`` and
``measurement`` as in the job spec. ``--eval``, ``--dataset`` and ``--calibration`` are npz
(``X``, optional ``y``), csv or parquet files, or ``digits`` for the builtin dataset; when the
eval data is the dataset, ``--eval-fraction`` of it is held out. Writes ``model.onnx`` (and
``model.safetensors`` while the model is a zoo model), ``report.json``, ``report.md`` and
``report.png`` to ``--out``, and prints the table. Exit status: 0 done, 1 a pass failed or
fell below the accuracy floor, 2 bad arguments or a spec that does not apply.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from compression.spec import (
    CompressionSpec,
    DataSpec,
    SourceFacts,
    check_against_source,
    signature_task,
    task_of_output,
)
from core.spec_kit import json_pointer
from core.text_model import feed_inputs

BUILTIN = "digits"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m compression", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True, help=".onnx, or .safetensors with --arch")
    parser.add_argument("--arch", help="the zoo architecture of a .safetensors source, as JSON")
    parser.add_argument("--passes", required=True, help="a JSON file, or inline JSON: a list of passes or a spec")
    parser.add_argument("--eval", required=True, help="eval rows: npz/csv/parquet file or 'digits'")
    parser.add_argument("--dataset", help="labelled rows for fine-tuning, distillation and calibration")
    parser.add_argument("--calibration", help="rows for static int8 calibration (default: the dataset)")
    parser.add_argument("--label-column", help="the label column of csv/parquet files")
    parser.add_argument("--eval-fraction", type=float, help="held out of the dataset when it is the eval data")
    parser.add_argument("--threads", type=int, help="ONNX Runtime and torch threads (default: the spec's, 1)")
    parser.add_argument("--out", type=Path, required=True, help="where the model and the report go")
    return parser.parse_args(argv)


# --- turning arguments into a spec (pure) ------------------------------------------------------


def _json_arg(value: str) -> Any:
    path = Path(value)
    return json.loads(path.read_text() if not value.lstrip().startswith(("{", "[")) and path.exists() else value)


def data_ref(value: str, handle: str, label_column: str | None) -> tuple[dict[str, Any], Path | None]:
    """The spec's data object for a CLI data argument, and the file behind it."""
    if value == BUILTIN:
        return {"builtin": BUILTIN}, None
    return {"file_id": f"file_{handle}", **({"label_column": label_column} if label_column else {})}, Path(value)


def build_spec(args: argparse.Namespace) -> tuple[CompressionSpec, dict[str, Path]]:
    """The job spec the arguments stand for (files get stand-in ids) and the files by id."""
    passes = _json_arg(args.passes)
    body: dict[str, Any] = passes if isinstance(passes, dict) else {"passes": passes}
    files: dict[str, Path] = {}
    source: dict[str, Any] = {"file_id": "file_source"}
    if args.arch:
        source["arch"] = _json_arg(args.arch)
    # the same path given twice is the same data: the eval rows are then held out of it
    handles: dict[str, str] = {}
    for name, value in (("eval", args.eval), ("dataset", args.dataset), ("calibration", args.calibration)):
        if value is None:
            continue
        ref, path = data_ref(value, handles.setdefault(value, name), args.label_column)
        if path is not None:
            files[ref["file_id"]] = path
        if name == "calibration":
            _set_calibration(body, ref)
        else:
            body[name] = {**ref, **({"fraction": args.eval_fraction} if name == "eval" and args.eval_fraction else {})}
    if args.threads:
        body["measurement"] = {**body.get("measurement", {}), "threads": args.threads}
    return CompressionSpec.model_validate({**body, "source": source}), files


def _set_calibration(body: dict[str, Any], ref: dict[str, Any]) -> None:
    for item in body.get("passes", []):
        if (
            isinstance(item, dict)
            and item.get("kind") == "quantize"
            and (item.get("mode") == "static" or item.get("protect"))
        ):
            item["calibration"] = {**item.get("calibration", {}), **ref}


# --- running -----------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        spec, files = build_spec(args)
    except (ValidationError, ValueError) as exc:
        return _bad(exc)
    from compression import pipeline
    from compression.data import DataError, assemble, read_rows
    from compression.passes import ModelState
    from compression.sources import SourceError, source_state

    args.out.mkdir(parents=True, exist_ok=True)
    pipeline.torch_threads(spec.measurement.threads)
    is_onnx = args.source.suffix.lower() == ".onnx"
    classes = _onnx_classes(args.source) if is_onnx else _state_dict_classes(args.source)
    signature = _onnx_signature(args.source) if is_onnx else {}
    inputs = feed_inputs(signature) if is_onnx else []
    task = signature_task(signature) if is_onnx else task_of_output("FP32", [-1, classes or 0])

    def load(data: DataSpec, pointer: str):
        return read_rows(files.get(data.file_id or ""), data, pointer, inputs)

    try:
        data = assemble(spec, load, num_outputs=classes or 2**31, task=task)
        work = args.out / "stages"
        work.mkdir(exist_ok=True)
        if is_onnx:
            shutil.copyfile(args.source, work / "source.onnx")
            source = ModelState.from_onnx(work / "source.onnx")
        else:
            source = source_state(spec.source.arch, args.source, work / "source.onnx", data.eval_x)
    except (DataError, SourceError) as exc:
        return _bad(exc)
    facts = SourceFacts(
        describe=str(args.source),
        zoo=source.zoo,
        features=source.num_features,
        classes=classes,
        default_dataset=spec.dataset,
        task=task,
    )
    problems = check_against_source(spec, facts)
    if problems:
        return _bad("\n".join(f"{p['pointer']}: {p['detail']}" for p in problems))
    hooks = pipeline.Hooks(
        pass_started=lambda i, n, kind: _say(f"pass {i + 1}/{n}: {kind}"),
        on_epoch=lambda i, epoch, epochs, loss: _say(f"  epoch {epoch}/{epochs} loss {loss:.4f}"),
        pass_finished=lambda i, n, row: _say(
            f"  measured: {'MAE' if row['mae'] is not None else 'accuracy'} "
            f"{row['mae'] if row['mae'] is not None else row['accuracy']}, mean cos {row['mean_cosine']:.5f}"
        ),
        log=_say,
    )
    try:
        result = pipeline.run(
            source, spec.passes, data, work, floor=spec.accuracy_floor, measurement=spec.measurement, hooks=hooks
        )
    except (pipeline.AccuracyFloorBreached, pipeline.PassFailed) as exc:
        _say(f"failed: {exc}")
        return 1
    return _write(result, args.out)


def _write(result: Any, out: Path) -> int:
    from compression.report import markdown, write_report
    from training.export import save_state_dict

    shutil.copyfile(result.final.onnx_path, out / "model.onnx")
    if result.final.has_torch:
        save_state_dict(result.final.torch_model, out / "model.safetensors", {"source": "compression"})
    files = write_report(result.report, out)
    print(markdown(result.report))
    _say(f"wrote {out / 'model.onnx'}, {files.json}, {files.markdown}, {files.chart}")
    return 0


def _onnx_classes(path: Path) -> int | None:
    import onnx

    outputs = onnx.load(str(path), load_external_data=False).graph.output
    dims = outputs[0].type.tensor_type.shape.dim if len(outputs) == 1 else []
    return int(dims[1].dim_value) if len(dims) == 2 and dims[1].HasField("dim_value") else None


def _onnx_signature(path: Path) -> dict[str, Any]:
    """The graph's signature as a model version's lists it (an npz feeds its inputs by name; its
    first output says whether it is a regression model)."""
    import onnx

    from core.onnx_signature import read_signature

    return read_signature(onnx.load(str(path), load_external_data=False))


def _state_dict_classes(path: Path) -> int | None:
    from safetensors import safe_open

    from compression.spec import state_dict_classes

    try:
        with safe_open(str(path), "np") as f:
            return state_dict_classes({key: {"shape": f.get_slice(key).get_shape()} for key in f.keys()})  # noqa: SIM118
    except Exception:  # not a readable file: loading the source says so with the reason
        return None


def _bad(problem: object) -> int:
    if isinstance(problem, ValidationError):
        for error in problem.errors(include_url=False):
            _say(f"{json_pointer(error['loc'])}: {error['msg']}")
    else:
        _say(str(problem))
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))
