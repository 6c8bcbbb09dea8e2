"""The cluster packaging (infra/docker, infra/compose, infra/k8s), checked without a cluster.

- every Kubernetes manifest, as each overlay renders it, against the Kubernetes schemas of a
  current release (strict: an unknown field is an error), the KEDA objects against KEDA's CRDs;
- compose.yaml against the Compose specification's JSON schema;
- every MAAS_* variable they (and the Dockerfile) set is a field of core.settings.Settings, and
  each role gets the services it needs (no drift);
- the commands the roles run exist (``maas … --help`` in a subprocess, every option used shown);
- the queries KEDA's postgresql scaler runs, against a migrated database holding jobs of every
  built-in type in every status: each counts its queue's queued and running work and nothing else.

The schemas are vendored in tests/schemas (see its README for their sources and versions).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from core.broker import QUEUES
from core.db import sqlalchemy_url
from core.job_states import STATUSES
from core.models import Artifact, Job, Model, ModelVersion, Prediction, Tenant, WebhookDelivery
from core.settings import ENV_PREFIX, Settings
from job_types.registry import BUILT_IN
from migrations import runner
from tests.support.kustomize import build
from tests.support.services import scratch_database

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"
K8S = REPO / "infra" / "k8s"
COMPOSE = REPO / "infra" / "compose" / "compose.yaml"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = kubernetes_validate.latest_version()
MAAS = str(Path(sys.executable).with_name("maas"))
# the console script of this checkout's sources (an editable install may predate a new package)
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

# what each role cannot start without (core.settings.Settings.require in api/app.py, core/broker.py,
# core/artifact_store.py, serving/__main__.py, cli/main.py's db command)
REQUIRED = {
    "api": {"database_url", "broker_url", "s3_endpoint_url", "s3_access_key", "s3_secret_key"},
    "worker": {"database_url", "broker_url", "s3_endpoint_url", "s3_access_key", "s3_secret_key"},
    "serve": {"database_url", "s3_endpoint_url", "s3_access_key", "s3_secret_key"},
    "db": {"database_url"},
}
ACTIVE = ("queued", "running")


# --- loading -------------------------------------------------------------------------------------


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(K8S / "overlays" / overlay))


def named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in rendered(overlay) if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def workloads(overlay: str) -> Iterator[dict[str, Any]]:
    return (r for r in rendered(overlay) if r["kind"] in ("Deployment", "Job"))


def container(resource: dict[str, Any]) -> dict[str, Any]:
    (only,) = resource["spec"]["template"]["spec"]["containers"]
    return only


def worker_queue(args: list[str]) -> str:
    return args[args.index("--queues") + 1]


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def maas_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the maas image."""
    return {name: s for name, s in compose()["services"].items() if "infra/docker/Dockerfile" in str(s.get("build"))}


def strict(schema: Any) -> Any:
    """The CRD's structural schema as the API server applies it to unknown fields, but refusing
    them (an object with properties and no additionalProperties or preserve-unknown-fields gets
    ``additionalProperties: false``), so that a misspelt field fails here instead of being pruned."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in SCHEMAS.glob("keda.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schema = strict(version["schema"]["openAPIV3Schema"])
            validators[(api_version, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid_for_kubernetes_and_keda(overlay: str) -> None:
    for resource in rendered(overlay):
        key = (resource["apiVersion"], resource["kind"])
        where = f"{overlay}: {resource['kind']}/{resource['metadata']['name']}"
        if resource["apiVersion"].startswith("keda.sh/"):
            errors = [f"{e.json_path}: {e.message}" for e in crd_validators()[key].iter_errors(resource)]
            assert not errors, f"{where} does not match KEDA's CRD: {errors}"
        else:
            try:
                kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is not a valid Kubernetes {KUBERNETES_VERSION} object: {exc}")


def test_the_validators_refuse_a_misspelt_field() -> None:
    """Both validators are strict: a typo fails rather than being dropped on apply."""
    deployment = copy.deepcopy(named("cpu", "Deployment", "maas-api"))
    container(deployment)["imagee"] = "maas:cpu"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(named("cpu", "ScaledObject", "maas-worker-training"))
    scaled["spec"]["minReplicas"] = 0
    assert list(crd_validators()[("keda.sh/v1alpha1", "ScaledObject")].iter_errors(scaled))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_pool_per_queue_each_scaled_from_zero_by_keda(overlay: str) -> None:
    pools = {
        worker_queue(container(d)["args"]): d
        for d in workloads(overlay)
        if d["kind"] == "Deployment" and container(d)["args"][0] == "worker"
    }
    assert sorted(pools) == sorted(QUEUES)
    scaled = {r["spec"]["scaleTargetRef"]["name"]: r for r in rendered(overlay) if r["kind"] == "ScaledObject"}
    for queue, deployment in pools.items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns replicas"
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
        assert scaled[name]["spec"]["minReplicaCount"] == 0
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        # replicas = demand / target: the target is what one pod runs at once
        args = container(deployment)["args"]
        assert trigger["metadata"]["targetQueryValue"] == args[args.index("--concurrency") + 1], queue
    model_server = scaled["maas-model-server"]["spec"]
    assert model_server["minReplicaCount"] >= 1
    (trigger,) = model_server["triggers"]
    assert trigger["type"] == "prometheus"
    assert "maas_inference_queue_depth" in trigger["metadata"]["query"]


def test_the_model_server_scaler_reads_a_metric_the_servers_export() -> None:
    from serving.metrics import ModelServerMetrics

    query = named("cpu", "ScaledObject", "maas-model-server")["spec"]["triggers"][0]["metadata"]["query"]
    exported = {metric.name for metric in ModelServerMetrics().registry.collect()}
    used = set(re.findall(r"\bmaas_[a-z_]+", query))
    assert used and used <= exported, f"{used - exported} is not exported by serving/metrics.py"


def test_the_api_probes_ports_and_service() -> None:
    defaults = Settings.model_construct()
    api = container(named("cpu", "Deployment", "maas-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in api["ports"]} == {
        "http": defaults.api_port,
        "grpc": defaults.grpc_port,
    }
    config = named("cpu", "ConfigMap", "maas-config")["data"]
    assert int(config["MAAS_API_PORT"]) == defaults.api_port and int(config["MAAS_GRPC_PORT"]) == defaults.grpc_port
    service = named("cpu", "Service", "maas-api")["spec"]
    assert {p["targetPort"] for p in service["ports"]} == {"http", "grpc"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_go_to_training_and_serving_only_in_the_gpu_overlay(overlay: str) -> None:
    with_gpu = {
        d["metadata"]["name"]
        for d in workloads(overlay)
        if "nvidia.com/gpu" in container(d).get("resources", {}).get("limits", {})
    }
    cuda = {d["metadata"]["name"] for d in workloads(overlay) if container(d)["image"].endswith(":cuda")}
    expected = {"maas-worker-training", "maas-model-server"} if overlay == "gpu" else set()
    assert with_gpu == expected and cuda == expected


def test_the_keda_connection_is_the_platform_database_url() -> None:
    auth = named("cpu", "TriggerAuthentication", "maas-postgres")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "connection", "name": "maas-secrets", "key": "MAAS_DATABASE_URL"}]
    url = named("cpu", "Secret", "maas-secrets")["stringData"]["MAAS_DATABASE_URL"]
    # KEDA's driver (pgx) takes postgresql:// URLs; core.db reads them too
    assert url.startswith("postgresql://")


# --- compose -------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert not errors
    misspelt = copy.deepcopy(compose())
    misspelt["services"]["api"]["helthcheck"] = {}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(misspelt))


def test_compose_roles_wait_for_migrations_and_the_bucket() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    for name, service in maas_services().items():
        if name == "migrate":
            continue
        depends = service["depends_on"]
        for one_shot in ("migrate", "minio-init"):
            assert depends[one_shot]["condition"] == "service_completed_successfully", name
        assert service["restart"] == "unless-stopped", name
    for name, service in services.items():
        if name not in ("migrate", "minio-init"):
            assert "healthcheck" in service, f"{name} has no health check"


def test_compose_has_one_worker_pool_per_queue_and_gpu_variants() -> None:
    services = maas_services()
    by_profile: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        if service["command"][0] != "worker":
            continue
        for profile in service.get("profiles", ["(always)"]):
            by_profile.setdefault(profile, {})[name] = worker_queue(service["command"])
    always = by_profile["(always)"]
    for profile in ("cpu", "gpu"):
        queues = sorted([*always.values(), *by_profile[profile].values()])
        assert queues == sorted(QUEUES), f"profile {profile}: {queues}"
    for name in ("worker-training-gpu", "model-server-gpu"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and services[name]["build"]["target"] == "cuda"
    assert not [n for n, s in services.items() if "deploy" in s and "gpu" not in s.get("profiles", [])]
    # a plain `docker compose up` starts the cpu variants (compose reads COMPOSE_PROFILES from .env)
    assert "COMPOSE_PROFILES=cpu" in (COMPOSE.parent / ".env").read_text().splitlines()
    ports = {p.split(":")[0] for p in services["api"]["ports"]}
    assert ports == {str(Settings.model_fields["api_port"].default), str(Settings.model_fields["grpc_port"].default)}


def test_compose_and_kubernetes_give_workers_the_same_grace() -> None:
    """The time a worker gets to checkpoint its job on SIGTERM, the same in both places."""
    k8s = {
        worker_queue(container(d)["args"]): d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for d in workloads("cpu")
        if container(d)["args"][0] == "worker"
    }
    for name, service in maas_services().items():
        if service["command"][0] == "worker":
            grace = service["stop_grace_period"]
            assert grace == f"{k8s[worker_queue(service['command'])]}s", name


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_a_job_pools_grace_covers_the_jobs_time_to_give_itself_back(overlay: str) -> None:
    """On SIGTERM a running job gets MAAS_PREEMPT_GRACE_S to checkpoint and requeue, then its
    processes cancel_grace_s to stop: the pod must not be killed before both (webhooks run no job)."""
    cancel_s = Settings.model_fields["cancel_grace_s"].default
    for deployment in workloads(overlay):
        args = container(deployment)["args"]
        if args[0] != "worker" or worker_queue(args) == "webhooks":
            continue
        env = {e["name"]: e.get("value") for e in container(deployment).get("env", [])}
        preempt_s = float(env["MAAS_PREEMPT_GRACE_S"])
        grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert preempt_s + cancel_s < grace_s, deployment["metadata"]["name"]
    for name, service in maas_services().items():
        if service["command"][0] == "worker" and worker_queue(service["command"]) != "webhooks":
            preempt_s = float(service["environment"]["MAAS_PREEMPT_GRACE_S"])
            assert preempt_s + cancel_s < float(service["stop_grace_period"].removesuffix("s")), name


# --- settings drift ------------------------------------------------------------------------------


def known_variables() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def k8s_environment(overlay: str, workload: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container(workload).get("env", [])}
    for source in container(workload).get("envFrom", []):
        if "configMapRef" in source:
            names |= set(named(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            names |= set(named(overlay, "Secret", source["secretRef"]["name"])["stringData"])
    return names


def dockerfile_environment() -> set[str]:
    return set(re.findall(r"\b(MAAS_[A-Z0-9_]+)=", DOCKERFILE.read_text()))


def test_every_maas_variable_set_is_a_setting() -> None:
    known = known_variables()
    found: dict[str, set[str]] = {"Dockerfile": dockerfile_environment()}
    for overlay in OVERLAYS:
        for resource in rendered(overlay):
            if resource["kind"] in ("ConfigMap", "Secret"):
                found[f"k8s {overlay} {resource['metadata']['name']}"] = set(
                    resource.get("data") or resource.get("stringData") or {}
                )
        for workload in workloads(overlay):
            found[f"k8s {overlay} {workload['metadata']['name']}"] = {
                e["name"] for e in container(workload).get("env", [])
            }
    for name, service in compose()["services"].items():
        found[f"compose {name}"] = set(service.get("environment", {}))
    unknown = {
        where: sorted(v for v in names if v.startswith(ENV_PREFIX) and v not in known) for where, names in found.items()
    }
    assert not {where: v for where, v in unknown.items() if v}, "not fields of core.settings.Settings"


def test_every_role_gets_the_settings_it_requires() -> None:
    image_env = dockerfile_environment()
    missing = {}
    for overlay in OVERLAYS:
        for workload in workloads(overlay):
            role = container(workload)["args"][0]
            have = k8s_environment(overlay, workload) | image_env
            lacking = {ENV_PREFIX + r.upper() for r in REQUIRED[role]} - have
            if lacking:
                missing[f"k8s {overlay} {workload['metadata']['name']}"] = sorted(lacking)
    for name, service in maas_services().items():
        role = service["command"][0]
        lacking = {ENV_PREFIX + r.upper() for r in REQUIRED[role]} - set(service["environment"]) - image_env
        if lacking:
            missing[f"compose {name}"] = sorted(lacking)
    assert not missing
    # the image listens on every interface, or nothing outside its container could reach it
    assert {"MAAS_API_HOST", "MAAS_MODEL_SERVER_HOST"} <= image_env
    # a model server must advertise an address the APIs reach, not 0.0.0.0
    for overlay in OVERLAYS:
        assert "MAAS_MODEL_SERVER_ADVERTISE_HOST" in k8s_environment(
            overlay, named(overlay, "Deployment", "maas-model-server")
        )
    for service in maas_services().values():
        if service["command"][0] == "serve":
            assert service["environment"]["MAAS_MODEL_SERVER_ADVERTISE_HOST"] == service["hostname"]


# --- the image -----------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined, comments dropped), by stage name."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for instruction in logical:
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", instruction, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [instruction])
        elif instruction.upper().startswith("FROM"):
            raise AssertionError(f"every stage is named: {instruction}")
        else:
            current.append(instruction)
    return stages


def last(instructions: list[str], keyword: str) -> str | None:
    found = [i for i in instructions if i.split()[0].upper() == keyword]
    return found[-1] if found else None


def test_the_image_has_a_cpu_and_a_cuda_target_not_root_without_build_tools() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "cpu", "a plain `docker build` makes the CPU image"
    for target in ("cpu", "cuda"):
        chain = [target]
        while (parent := stages[chain[-1]][0].split()[1]) in stages:
            chain.append(parent)
        instructions = [i for stage in reversed(chain) for i in stages[stage]]
        user = last(instructions, "USER")
        assert user is not None and user.split()[1].split(":")[0] not in ("root", "0"), target
        entrypoint = last(instructions, "ENTRYPOINT")
        assert entrypoint is not None and json.loads(entrypoint.split(None, 1)[1])[-1] == "maas", target
        runs = " ".join(i for i in instructions if i.startswith("RUN"))
        assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b", runs), f"{target} installs build tools"
        copies = [i for i in instructions if i.startswith("COPY")]
        assert all("--from=build-" in i for i in copies), f"{target} copies only the built virtualenv"
    cuda_build = " ".join(stages["build-cuda"])
    assert "onnxruntime-gpu" in cuda_build and "download.pytorch.org/whl/cpu" not in cuda_build
    assert "download.pytorch.org/whl/cpu" in " ".join(stages["build-cpu"])


def test_the_build_context_holds_every_package() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    included = {line[1:] for line in ignore if line.startswith("!")}
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject.split("[tool.setuptools.packages.find]")[1])
    assert packages is not None
    wanted = {p.strip().strip('"').rstrip("*") for p in packages.group(1).split(",")}
    assert wanted | {"pyproject.toml", "README.md"} <= included


def role_commands() -> set[tuple[str, ...]]:
    """Every command line (after ``maas``) that compose and the manifests run."""
    commands = {tuple(s["command"]) for s in maas_services().values()}
    for overlay in OVERLAYS:
        commands |= {tuple(container(w)["args"]) for w in workloads(overlay)}
    return commands


def test_the_roles_commands_exist() -> None:
    """Each role's whole command line, then --help: the options before it are parsed (an unknown one
    fails), and each is in the help shown."""
    commands = role_commands()
    assert {c[0] for c in commands} == set(REQUIRED)
    for command in sorted(commands):
        result = subprocess.run(
            [MAAS, *command, "--help"], capture_output=True, text=True, timeout=120, env=SUBPROCESS_ENV
        )
        assert result.returncode == 0, f"maas {' '.join(command)} --help: {result.stderr}"
        for option in (w for w in command if w.startswith("--")):
            assert option in result.stdout, f"maas {' '.join(command)}: no {option} in its help"
        if command[0] == "worker":
            assert worker_queue(list(command)) in QUEUES


def test_the_health_checks_command_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.probe", "--help"], capture_output=True, text=True, env=SUBPROCESS_ENV
    )
    assert result.returncode == 0 and "worker" in result.stdout


# --- the scalers' queries, on a real database -----------------------------------------------------


@pytest.fixture(scope="module")
def scaler_db(services) -> Iterator[Session]:
    with scratch_database(services.database_admin_url, prefix="maas_scaling") as url:
        runner.upgrade(url)
        engine = create_engine(sqlalchemy_url(url))
        with Session(engine) as session:
            yield session
        engine.dispose()


def fill(session: Session) -> dict[str, int]:
    """Jobs of every built-in type in every status, asynchronous and synchronous predictions, and
    webhook deliveries due and not; the demand each queue should see."""
    tenant = Tenant(id="tenant_scaling", name="scaling")
    artifact = Artifact(
        id="artifact_s", tenant_id=tenant.id, kind="model", name="m.onnx", bytes=1, sha256="0" * 64, storage_key="k"
    )
    model = Model(id="model_s", tenant_id=tenant.id, name="m")
    version = ModelVersion(id="mv_s", model_id=model.id, version=1, artifact_id=artifact.id, sha256="0" * 64)
    for row in (tenant, artifact, model, version):  # no ORM relationships: insert in foreign-key order
        session.add(row)
        session.flush()
    demand = dict.fromkeys(QUEUES, 0)
    n = 0
    for job_type in BUILT_IN:
        # a job of several nodes (training's strategy.nnodes) needs a worker for each
        for spec, nodes in (({}, 1), ({"strategy": {"nnodes": 3}}, 3)):
            for status in STATUSES:
                n += 1
                session.add(Job(id=f"job_{n}", tenant_id=tenant.id, type=job_type.name, status=status, spec=spec))
                if status in ACTIVE:
                    demand[job_type.queue] += nodes if job_type.name == "training" else 1
    for is_async in (True, False):
        for status in STATUSES:
            n += 1
            session.add(
                Prediction(
                    id=f"pred_{n}", tenant_id=tenant.id, model_version_id=version.id, status=status, is_async=is_async
                )
            )
            if is_async and status in ACTIVE:
                demand["inference"] += 1
    now = datetime.now(UTC)
    for status, due, counted in (
        ("pending", now - timedelta(seconds=1), True),
        ("pending", now + timedelta(hours=1), False),  # retrying later: no pod held for it
        ("delivered", None, False),
        ("failed", None, False),
    ):
        n += 1
        session.add(
            WebhookDelivery(
                id=f"wh_{n}",
                tenant_id=tenant.id,
                subject_id="job_1",
                event="job.succeeded",
                url="https://x.example",
                payload={},
                status=status,
                next_attempt_at=due,
            )
        )
        demand["webhooks"] += counted
    session.commit()
    return demand


def test_each_scaler_query_counts_its_queues_queued_and_running_work(scaler_db: Session) -> None:
    demand = fill(scaler_db)
    assert all(demand.values()), "every queue has some demand, so a query counting nothing fails"
    pools = {
        d["metadata"]["name"]: worker_queue(container(d)["args"])
        for d in workloads("cpu")
        if container(d)["args"][0] == "worker"
    }
    seen = {}
    for scaled in (r for r in rendered("cpu") if r["kind"] == "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "postgresql":
                queue = pools[scaled["spec"]["scaleTargetRef"]["name"]]
                value = scaler_db.execute(text(trigger["metadata"]["query"])).scalar_one()
                assert isinstance(value, int), "KEDA reads one number"
                seen[queue] = value
    assert seen == demand
