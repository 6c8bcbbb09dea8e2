"""The API's routing table: which model servers can answer for which model version, and the choice among them.

Pure data and decisions, rebuilt from Postgres every ``routing_refresh_s`` by
``api.inference_router``. The rules:

- a request without a version goes to the deployed version's ready replicas; while the
  deployed version has none (a switch in progress), it falls back to another version of the
  model that still has ready replicas, newest first, so a switch drops no request;
- a request naming a version goes to that version's ready replicas (deployed or not yet
  unloaded); the deployed version without ready replicas is "not ready" (503), any other
  version is "not deployed" (404);
- "not ready" says whether the request may wait for a cold start (``NotReady.pending``): the
  deployed version has a cold-start budget (``cold_start_timeout_ms`` > 0) and its load has not
  failed everywhere; then ``api.inference_router`` holds the request instead of refusing it;
- among replicas, the one with the fewest requests in flight from this API process wins, ties
  taken in turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.deployments import BatchingSettings


class RouteError(Exception):
    """No replica can take the request; ``status`` is the OIP status to answer with."""

    status = 500


class NoRoute(RouteError):
    """The model or version is unknown, or not deployed."""

    status = 404


class NotReady(RouteError):
    """The model is deployed but no replica of it is ready yet.

    ``pending`` is the deployed version's target (with no replicas) when a request may wait for one
    to load; None when it may not (no cold-start budget, or every load of it failed).
    """

    status = 503

    def __init__(self, message: str, pending: Target | None = None) -> None:
        super().__init__(message)
        self.pending = pending


@dataclass(frozen=True)
class RoutableReplica:
    """A live model server where a version is ready: a place the API may send that version's requests."""

    server_id: str
    url: str


@dataclass(frozen=True)
class ServedVersion:
    """A version with its signature and the live servers where it is ready."""

    version_id: str
    number: int
    signature: Mapping[str, Any]
    replicas: tuple[RoutableReplica, ...] = ()


@dataclass(frozen=True)
class ModelRoute:
    """A tenant's model that is deployed, or still has ready replicas of an earlier deployment."""

    tenant_id: str
    name: str
    model_id: str
    deployed: int | None  # the deployed version number; None once undeployed
    batching: BatchingSettings | None
    versions: Mapping[int, ServedVersion]
    # how long a request may wait for a replica of the deployed version to load (0: it may not)
    cold_start_timeout_ms: int = 0
    # why the deployed version cannot load (every live server that tried failed); None otherwise
    failed: str | None = None


@dataclass(frozen=True)
class Target:
    """Where one request may go: a version and its ready replicas."""

    model: ModelRoute
    version: ServedVersion

    @property
    def batching(self) -> BatchingSettings | None:
        """The deployment's settings; requests to an older version still draining keep the current ones."""
        return self.model.batching


@dataclass(frozen=True)
class VersionRow:
    """A model version as the database describes it."""

    tenant_id: str
    model_name: str
    model_id: str
    version_id: str
    number: int
    signature: Mapping[str, Any]

    @property
    def model_key(self) -> tuple[str, str]:
        return (self.tenant_id, self.model_name)


@dataclass(frozen=True)
class DeployedRow:
    version: VersionRow
    batching: BatchingSettings
    cold_start_timeout_ms: int = 0
    failed: str | None = None  # the reason, when every replica of the version on a live server failed


@dataclass(frozen=True)
class ReplicaRow:
    """A ready replica on a live server."""

    version: VersionRow
    server_id: str
    url: str


@dataclass(frozen=True)
class RoutingTable:
    models: Mapping[tuple[str, str], ModelRoute] = field(default_factory=dict)
    servers: Mapping[str, str] = field(default_factory=dict)  # every live model server: id -> url

    def resolve(self, tenant_id: str, name: str, version: int | None = None) -> Target:
        """The target of a request, or :class:`NoRoute` / :class:`NotReady` saying why there is none."""
        model = self.models.get((tenant_id, name))
        if model is None:
            raise NoRoute(f"model '{name}' is not deployed")
        if version is not None:
            served = model.versions.get(version)
            if served is not None and served.replicas:
                return Target(model, served)
            if version == model.deployed:
                raise self._not_ready(model, f"version {version} of model '{name}'")
            raise NoRoute(f"version {version} of model '{name}' is not deployed")
        if model.deployed is not None:
            deployed = model.versions[model.deployed]
            if deployed.replicas:
                return Target(model, deployed)
        fallback = [v for _, v in sorted(model.versions.items(), reverse=True) if v.replicas]
        if fallback:
            return Target(model, fallback[0])
        if model.deployed is None:
            raise NoRoute(f"model '{name}' is not deployed")
        raise self._not_ready(model, f"model '{name}'")

    @staticmethod
    def _not_ready(model: ModelRoute, what: str) -> NotReady:
        assert model.deployed is not None
        if model.failed is not None:
            return NotReady(f"{what} is deployed but not ready: its load failed ({model.failed})")
        if model.cold_start_timeout_ms <= 0:
            return NotReady(f"{what} is deployed but not ready yet")
        pending = Target(model, model.versions[model.deployed])
        return NotReady(f"{what} is deployed but not ready yet (no replica is loaded)", pending)

    def tenant_ready(self, tenant_id: str) -> bool:
        """Whether at least one of the tenant's deployed models can serve a request now."""
        return any(
            model.tenant_id == tenant_id
            and model.deployed is not None
            and any(v.replicas for v in model.versions.values())
            for model in self.models.values()
        )


def build_table(
    deployed: Iterable[DeployedRow], ready: Iterable[ReplicaRow], servers: Mapping[str, str]
) -> RoutingTable:
    """The table from the deployments and the ready replicas of live servers."""
    deployments = {row.version.model_key: row for row in deployed}
    replicas: dict[str, list[RoutableReplica]] = {}
    versions: dict[tuple[str, str], dict[int, VersionRow]] = {}
    for row in [d.version for d in deployments.values()] + [r.version for r in ready]:
        versions.setdefault(row.model_key, {})[row.number] = row
    for replica in ready:
        replicas.setdefault(replica.version.version_id, []).append(RoutableReplica(replica.server_id, replica.url))
    models = {}
    for key, numbered in versions.items():
        any_row = next(iter(numbered.values()))
        deployment = deployments.get(key)
        models[key] = ModelRoute(
            tenant_id=any_row.tenant_id,
            name=any_row.model_name,
            model_id=any_row.model_id,
            deployed=deployment.version.number if deployment else None,
            batching=deployment.batching if deployment else None,
            cold_start_timeout_ms=deployment.cold_start_timeout_ms if deployment else 0,
            failed=deployment.failed if deployment else None,
            versions={
                number: ServedVersion(v.version_id, number, v.signature, tuple(replicas.get(v.version_id, ())))
                for number, v in numbered.items()
            },
        )
    return RoutingTable(models=models, servers=dict(servers))


def pick_replica(
    replicas: Iterable[RoutableReplica], in_flight: Mapping[str, int], turn: int, exclude: Iterable[str] = ()
) -> RoutableReplica | None:
    """The replica with the fewest requests in flight; ``turn`` (a counter) rotates among equals."""
    skipped = set(exclude)
    candidates = [r for r in replicas if r.server_id not in skipped]
    if not candidates:
        return None
    fewest = min(in_flight.get(r.server_id, 0) for r in candidates)
    least_busy = [r for r in candidates if in_flight.get(r.server_id, 0) == fewest]
    return least_busy[turn % len(least_busy)]
