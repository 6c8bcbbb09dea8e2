"""What a model server does next: the deployments on one side, the versions it holds on the other.

Pure: the server's control loop (``serving.control_loop``) gathers both sides every poll, asks
:func:`plan` for the :class:`ReplicaSteps`, and carries them out. The rules that make a version
switch lose no request live here:

- a version that is no longer deployed is retired only once its model's deployed version is
  ready on this server (or the model has no deployment any more), so a new version that is
  still loading, or failed to load, leaves the old one serving;
- a retired version is ``draining``: it keeps taking requests for ``grace_s`` (the APIs re-read
  their routing tables meanwhile and move to the new version), then it is drained and dropped;
- a version deployed again while it drains is taken back into service;
- a failed load is tried again after ``retry_s``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.deployments import BatchingSettings

LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"
# being drained and dropped; not a database status (the row says draining until it is deleted)
UNLOADING = "unloading"


@dataclass(frozen=True)
class Wanted:
    """A deployed version, as the deployments table says."""

    version_id: str
    model_id: str
    batching: BatchingSettings


@dataclass(frozen=True)
class Held:
    """A version this server holds; ``since`` is when its status last changed (monotonic seconds)."""

    version_id: str
    model_id: str
    status: str
    batching: BatchingSettings | None
    since: float


@dataclass
class ReplicaSteps:
    """What the control loop does next, by version id."""

    load: list[str] = field(default_factory=list)  # not held yet, or failed long enough ago
    rebatch: list[str] = field(default_factory=list)  # ready, but the batching settings changed
    retire: list[str] = field(default_factory=list)  # ready and no longer deployed: start draining
    reinstate: list[str] = field(default_factory=list)  # draining, but deployed again
    unload: list[str] = field(default_factory=list)  # drained long enough, or failed and not wanted

    def __bool__(self) -> bool:
        return any((self.load, self.rebatch, self.retire, self.reinstate, self.unload))


def plan(
    wanted: Iterable[Wanted], held: Mapping[str, Held], now: float, *, grace_s: float, retry_s: float
) -> ReplicaSteps:
    wanted_by_version = {w.version_id: w for w in wanted}
    deployed_by_model = {w.model_id: w.version_id for w in wanted_by_version.values()}
    steps = ReplicaSteps()
    for version_id, want in wanted_by_version.items():
        have = held.get(version_id)
        if have is None or (have.status == FAILED and now - have.since >= retry_s):
            steps.load.append(version_id)
        elif have.status == READY and have.batching != want.batching:
            steps.rebatch.append(version_id)
        elif have.status == DRAINING:
            steps.reinstate.append(version_id)
    for version_id, have in held.items():
        if version_id in wanted_by_version:
            continue
        if have.status == READY and _successor_ready(have.model_id, deployed_by_model, held):
            steps.retire.append(version_id)
        elif (have.status == DRAINING and now - have.since >= grace_s) or have.status == FAILED:
            steps.unload.append(version_id)
    return steps


def _successor_ready(model_id: str, deployed_by_model: Mapping[str, str], held: Mapping[str, Held]) -> bool:
    deployed = deployed_by_model.get(model_id)
    if deployed is None:
        return True  # undeployed: nothing to wait for
    successor = held.get(deployed)
    return successor is not None and successor.status == READY
