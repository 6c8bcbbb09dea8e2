"""The ``maas`` commands that talk to a running platform through the SDK (``maas_client``), never
with an HTTP client of their own:

maas login [--base-url URL] [--api-key KEY]      check the key, store both (~/.config/maas, 0600)
maas files upload PATH [--purpose P] | list
maas jobs submit SPEC.json [--wait] | get ID | list | cancel ID | logs ID [-f]
maas artifacts download ID [-o PATH]
maas models list
maas deploy NAME --version N [--wait]
maas deployments stats [--window-minutes N]   each deployment's traffic, errors, latency, batches
maas predict NAME --input FILE.npz [--save OUT.npz]

Every one takes ``--output json`` (one JSON document on stdout, for scripts) and ``--base-url`` /
``--api-key`` (else MAAS_BASE_URL / MAAS_API_KEY, else what ``maas login`` stored). ``jobs submit
--wait`` and ``jobs logs -f`` exit 0 when the job succeeded, 1 when it failed, 3 when it was canceled.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cli import credentials
from cli.follow import DETACHED, EXIT_CODES, event_line, follow, summary
from cli.render import cell, console, error, pairs, print_json, table
from core.settings import Settings
from maas_client import Client, MaasError

Command = Callable[[Client, argparse.Namespace], int]


def _client(args: argparse.Namespace) -> Client:
    found = credentials.resolve(args.base_url, args.api_key)
    return Client(found.base_url, found.api_key)


def _run(command: Command) -> Callable[[Settings, argparse.Namespace], int]:
    """A client command as the dispatcher calls it: its SDK client made and closed, its errors printed."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            with _client(args) as maas:
                return command(maas, args)
        except MaasError as exc:
            return error(exc, args.output == "json")

    return run


def _json(args: argparse.Namespace) -> bool:
    return bool(args.output == "json")


# ---------------------------------------------------------------- login


def cmd_login(settings: Settings, args: argparse.Namespace) -> int:
    found = credentials.resolve(args.base_url, args.api_key)
    base_url = found.base_url or "http://127.0.0.1:8080"
    api_key = args.api_key or found.api_key or getpass.getpass("API key: ").strip()
    try:
        with Client(base_url, api_key) as maas:
            next(iter(maas.files.list(page_size=1)), None)  # any authenticated call: a bad key is a 401 here
    except MaasError as exc:
        return error(exc, _json(args))
    path = credentials.save(base_url.rstrip("/"), api_key)
    if _json(args):
        print_json({"base_url": base_url, "key_prefix": api_key[:13], "path": str(path)})
    else:
        console().print(f"logged in to {base_url} with key {api_key[:13]}…; saved to {path} (mode 0600)")
    return 0


# ---------------------------------------------------------------- files


def cmd_files_upload(maas: Client, args: argparse.Namespace) -> int:
    path = Path(args.path)
    if _json(args):
        file = maas.files.upload(path, purpose=args.purpose)
        print_json(file)
        return 0
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"upload {path.name}", total=path.stat().st_size)
        file = maas.files.upload(path, purpose=args.purpose, progress=lambda sent, _: bar.update(task, completed=sent))
    console().print(
        pairs(
            [
                ("id", file.id),
                ("filename", file.filename),
                ("format", file.format),
                ("bytes", file.bytes),
                ("sha256", file.sha256),
            ]
        )
    )
    return 0


def cmd_files_list(maas: Client, args: argparse.Namespace) -> int:
    files = _take(maas.files.list(purpose=args.purpose), args.limit)
    if _json(args):
        print_json(files)
    else:
        rows = [(f.id, f.filename, f.purpose, f.format, f.bytes, f.created_at) for f in files]
        console().print(table(("id", "filename", "purpose", "format", "bytes", "created"), rows))
    return 0


def _take(items: Any, limit: int) -> list[Any]:
    taken: list[Any] = []
    for item in items:
        if len(taken) == limit:
            break
        taken.append(item)
    return taken


# ---------------------------------------------------------------- jobs


def _read_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        body = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as exc:
        raise MaasError(f"cannot read {args.spec}: {exc}") from None
    if not isinstance(body, dict):
        raise MaasError(f"{args.spec} must hold a JSON object")
    if args.type:  # the file is only the spec
        body = {"type": args.type, "spec": body}
    if "type" not in body or "spec" not in body:
        raise MaasError(f'{args.spec} must hold {{"type": ..., "spec": {{...}}}} (or pass --type with a bare spec)')
    return body


def cmd_jobs_submit(maas: Client, args: argparse.Namespace) -> int:
    body = _read_body(args)
    job = maas.jobs.create(
        body["type"],
        body["spec"],
        webhook=body.get("webhook"),
        webhook_events_filter=body.get("webhook_events_filter"),
        metadata=body.get("metadata"),
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        print_json(job) if _json(args) else console().print(f"{job.id}  {job.type}  {job.status}")
        return 0
    return _watch(maas, job.id, args)


def _watch(maas: Client, job_id: str, args: argparse.Namespace) -> int:
    if _json(args):
        job = maas.jobs.wait(job_id)
    else:
        out = console()
        try:
            job = follow(maas, job_id, out)
        except KeyboardInterrupt:
            return DETACHED
        out.print(summary(job))
        if job.error:
            error_text = f"{job.error.get('code')}: {job.error.get('message')}"
            console(stderr=True).print(f"maas: job {job.id} {job.status}: {error_text}", markup=False)
        elif job.status != "succeeded":
            console(stderr=True).print(f"maas: job {job.id} was {job.status}", markup=False)
    if _json(args):
        print_json(job)
    return EXIT_CODES.get(job.status, 1)


def cmd_jobs_get(maas: Client, args: argparse.Namespace) -> int:
    job = maas.jobs.get(args.job_id)
    print_json(job) if _json(args) else console().print(summary(job))
    return 0


def cmd_jobs_list(maas: Client, args: argparse.Namespace) -> int:
    jobs = _take(maas.jobs.list(type=args.type, status=args.status), args.limit)
    if _json(args):
        print_json(jobs)
    else:
        rows = [
            (j.id, j.type, j.status, f"{j.progress.step}/{j.progress.total_steps or '?'}", j.created_at) for j in jobs
        ]
        console().print(table(("id", "type", "status", "progress", "created"), rows))
    return 0


def cmd_jobs_cancel(maas: Client, args: argparse.Namespace) -> int:
    job = maas.jobs.cancel(args.job_id)
    print_json(job) if _json(args) else console().print(f"{job.id}  {job.status}  (cancel requested)")
    return 0


def cmd_jobs_logs(maas: Client, args: argparse.Namespace) -> int:
    if args.follow:
        return _watch(maas, args.job_id, args)
    events = list(maas.jobs.events(args.job_id))
    if _json(args):
        print_json(events)
    else:
        out = console()
        for event in events:
            data = "" if event.type == "status" else json.dumps(event.data)
            out.print(f"{event_line(event)}  {data}".rstrip(), markup=False)
    return 0


# ---------------------------------------------------------------- artifacts, models, serving


def cmd_artifacts_download(maas: Client, args: argparse.Namespace) -> int:
    path = maas.artifacts.download(args.artifact_id, args.output_path or Path.cwd())
    link = maas.artifacts.get(args.artifact_id)
    if _json(args):
        print_json({"id": args.artifact_id, "path": str(path), "bytes": path.stat().st_size, "sha256": link.sha256})
    else:
        console().print(f"{path}  {path.stat().st_size} bytes  sha256 {link.sha256} (checked)")
    return 0


def cmd_models_list(maas: Client, args: argparse.Namespace) -> int:
    models = _take(maas.models.list(), args.limit)
    if _json(args):
        print_json(models)
    else:
        rows = [(m.name, m.latest_version, m.id, m.created_at) for m in models]
        console().print(table(("name", "latest version", "id", "created"), rows))
    return 0


# the deployment's batching and scaling settings, as options of `maas deploy`
DEPLOY_SETTINGS = (
    "max-batch-size",
    "max-queue-delay-us",
    "max-queue-size",
    "timeout-ms",
    "min-replicas",
    "max-replicas",
    "target-concurrency",
    "idle-timeout-s",
    "cold-start-timeout-ms",
)


def cmd_deploy(maas: Client, args: argparse.Namespace) -> int:
    settings = {
        name: getattr(args, name)
        for name in (option.replace("-", "_") for option in DEPLOY_SETTINGS)
        if getattr(args, name) is not None
    }
    deployment = maas.deployments.deploy(args.name, args.version, **settings)
    if args.wait:
        deployment = maas.deployments.wait_ready(args.name, args.version, timeout=args.timeout)
    if _json(args):
        print_json(deployment)
    else:
        replicas = ", ".join(f"{r.model_server} v{r.version} {r.status}" for r in deployment.replicas) or "none yet"
        console().print(
            pairs(
                [
                    ("model", f"{deployment.model} v{deployment.version}"),
                    ("status", deployment.status),
                    ("max_batch_size", deployment.max_batch_size),
                    ("max_queue_delay_us", deployment.max_queue_delay_us),
                    ("replicas (min-max)", f"{deployment.min_replicas}-{deployment.max_replicas}"),
                    ("idle_timeout_s", deployment.idle_timeout_s),
                    ("replicas", replicas),
                ]
            )
        )
    return 0


def cmd_deployments_stats(maas: Client, args: argparse.Namespace) -> int:
    stats = maas.deployments.stats(window_minutes=args.window_minutes)
    if _json(args):
        print_json(stats)
        return 0
    rows = [
        (
            f"{d.model} v{d.version}",
            d.requests,
            d.requests_per_minute,
            d.errors,
            None if d.error_rate is None else f"{d.error_rate:.2%}",
            d.latency_p50_ms,
            d.latency_p99_ms,
            d.mean_batch_size,
            d.max_batch_size,
        )
        for d in stats.data
    ]
    columns = ("model", "requests", "req/min", "errors", "error rate", "p50 ms", "p99 ms", "mean batch", "max batch")
    title = f"last {stats.window_minutes} min (since {cell(stats.since)} UTC)"
    console().print(table(columns, rows, title=title))
    return 0


def cmd_predict(maas: Client, args: argparse.Namespace) -> int:
    try:
        with np.load(args.input) as data:
            inputs = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise MaasError(f"cannot read {args.input} as .npz: {exc}") from None
    outputs = maas.infer(args.name, inputs, version=args.version)
    if args.save:
        np.savez(args.save, **cast(Any, outputs))  # numpy's stub reads ** as maybe allow_pickle
    if _json(args):
        print_json({n: {"shape": list(a.shape), "dtype": str(a.dtype), "data": a.tolist()} for n, a in outputs.items()})
    else:
        rows = [(n, a.dtype, list(a.shape), np.array2string(a.ravel()[:6], precision=4)) for n, a in outputs.items()]
        console().print(table(("output", "dtype", "shape", "first values"), rows))
    return 0


# ---------------------------------------------------------------- the parser


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", choices=["text", "json"], default="text", help="json: one document on stdout")
    common.add_argument("--base-url", help="the API (default: MAAS_BASE_URL, else what `maas login` stored)")
    common.add_argument("--api-key", help="the API key (default: MAAS_API_KEY, else what `maas login` stored)")
    return common


def add_client_commands(sub: Any) -> None:
    """Add the client commands to the ``maas`` parser's subcommands."""
    common = [_common()]

    def leaf(parent: Any, name: str, command: Command, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, parents=common, help=help_, description=help_)
        parser.set_defaults(func=_run(command))
        return parser

    login = sub.add_parser("login", parents=common, help="store the base URL and API key for the commands below")
    login.set_defaults(func=cmd_login)

    files = sub.add_parser("files", help="datasets and models").add_subparsers(dest="action", required=True)
    upload = leaf(files, "upload", cmd_files_upload, "upload a dataset (.npz .csv .parquet) or model (.onnx)")
    upload.add_argument("path")
    upload.add_argument("--purpose", choices=["dataset", "model"], default="dataset")
    files_list = leaf(files, "list", cmd_files_list, "list files, newest first")
    files_list.add_argument("--purpose", choices=["dataset", "model"])
    files_list.add_argument("--limit", type=int, default=20)

    jobs = sub.add_parser("jobs", help="training, compression, batch inference").add_subparsers(
        dest="action", required=True
    )
    submit = leaf(jobs, "submit", cmd_jobs_submit, 'create a job from a JSON file {"type", "spec", ...}')
    submit.add_argument("spec", help='a JSON file: {"type": ..., "spec": {...}} (or a bare spec with --type)')
    submit.add_argument("--type", help="the job type, when the file holds only the spec")
    submit.add_argument("--wait", action="store_true", help="follow the job live until it ends (exit 0: succeeded)")
    submit.add_argument("--idempotency-key", help="default: a new one")
    get = leaf(jobs, "get", cmd_jobs_get, "a job's status, metrics and result")
    get.add_argument("job_id")
    jobs_list = leaf(jobs, "list", cmd_jobs_list, "list jobs, newest first")
    jobs_list.add_argument("--type")
    jobs_list.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "canceled"])
    jobs_list.add_argument("--limit", type=int, default=20)
    cancel = leaf(jobs, "cancel", cmd_jobs_cancel, "cancel a job")
    cancel.add_argument("job_id")
    logs = leaf(jobs, "logs", cmd_jobs_logs, "a job's events; -f follows it live until it ends")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true")

    artifacts = sub.add_parser("artifacts", help="what jobs produced").add_subparsers(dest="action", required=True)
    download = leaf(artifacts, "download", cmd_artifacts_download, "download an artifact, its sha256 checked")
    download.add_argument("artifact_id")
    download.add_argument("-o", "--output-path", type=Path, help="a file or a folder (default: here)")

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    models_list = leaf(models, "list", cmd_models_list, "list models")
    models_list.add_argument("--limit", type=int, default=50)

    deploy = leaf(sub, "deploy", cmd_deploy, "deploy a model version (or switch to it)")
    deploy.add_argument("name")
    deploy.add_argument("--version", type=int, required=True)
    for option in DEPLOY_SETTINGS:
        deploy.add_argument(f"--{option}", type=int)
    deploy.add_argument("--wait", action="store_true", help="until the version is ready on a model server")
    deploy.add_argument("--timeout", type=float, default=120.0, help="for --wait, in seconds")

    deployments = sub.add_parser("deployments", help="what the deployed models serve").add_subparsers(
        dest="action", required=True
    )
    deployment_stats = leaf(
        deployments, "stats", cmd_deployments_stats, "each deployment's requests, errors, p50/p99 latency, batch sizes"
    )
    deployment_stats.add_argument("--window-minutes", type=int, help="how many minutes back, 1 to 1440 (default 5)")

    predict = leaf(sub, "predict", cmd_predict, "run a deployed model on the arrays of an .npz (one per input)")
    predict.add_argument("name")
    predict.add_argument("--input", required=True, help="an .npz with one array per model input, named as them")
    predict.add_argument("--version", type=int)
    predict.add_argument("--save", help="write the outputs to this .npz")
