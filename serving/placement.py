"""Where replicas go and which ones leave: one decision pass over every model server and deployment.

Pure: the placer (``serving.placer``, run by one model server at a time) reads the servers, the
replicas they hold and the deployments, asks :func:`place` for the :class:`Decisions` and writes
them. The rules:

- a deployment wants ``min_replicas``; one more when a request waits and none is placed
  (``demand``: a cold start, or the first replica of a new PUT); one more when the autoscaler says
  ``up`` and one fewer when it says ``down`` (never below ``max(min_replicas, 1)``: going to zero is
  the idle timeout's job); never more than ``max_replicas`` nor than there are servers (one replica
  of a version per server);
- a ready replica without a request for ``idle_timeout_s`` and nothing in flight unloads, down to
  ``min_replicas``;
- a new replica goes to a server without one of its model (spreading), among those the one with
  the most free memory where it fits (``budget - held ≥ needed``); placed replicas count from
  the moment they are assigned, so a budget is never exceeded, not even while loading;
- when it fits nowhere, the least recently used idle replica (ready, nothing in flight) of a
  deployment above its ``min_replicas`` is evicted, and the next ones, on one server, until it
  would fit: the new replica is placed once their memory is free (a later pass). A replica of a
  deployment with ``min_replicas`` ≥ 1 is pinned: never the one evicted below that floor;
- a version bigger than every budget fails its deployment with the reason, once, instead of
  evicting and loading in a loop;
- a server with a GPU (``gpu_budget_bytes`` > 0) has a second budget: a replica placed there
  needs its ``gpu_memory_bytes`` free on the GPU as well, eviction frees whichever is short
  (victims that free neither short one are passed over), and a version that fits no GPU budget
  where it fits in memory fails naming the GPU budget; servers without a GPU count memory only,
  and a replica there holds no GPU memory;
- after a version switch, replicas of the old version are evicted once the new one is ready.

The autoscaler's memory (how long the load has stayed above or below target) is :class:`Trend`,
advanced by :func:`observe`; also pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from core.deployments import ScalingSettings

ASSIGNED, LOADING, READY, DRAINING, FAILED = "assigned", "loading", "ready", "draining", "failed"
PLACED = (ASSIGNED, LOADING, READY)  # replicas that serve, or will
UP, DOWN = "up", "down"
# why a replica is evicted: the start of its ``evict_reason`` ("idle: no request for 301 s …"), a metric label
IDLE, ROOM, SCALE_DOWN, VERSION_SWITCH = "idle", "room", "scale_down", "version_switch"
WELL_BELOW = 0.5  # scale in only when in-flight per replica stays under half the target
MIB = 1 << 20
MEASURE_MARGIN = 0.1  # loads of one version measured up to 8% apart (bench/serverless.py's budget run)


@dataclass(frozen=True)
class ServerView:
    id: str
    budget_bytes: int
    gpu_budget_bytes: int = 0  # 0: no GPU, replicas there run on the CPU


@dataclass(frozen=True)
class ReplicaView:
    """A ``model_replicas`` row of a live server."""

    server_id: str
    version_id: str
    model_id: str
    status: str
    memory_bytes: int  # measured once loaded; the version's estimate before
    idle_s: float  # since its last request (since it was placed, when it never had one)
    in_flight: int
    evicting: bool = False  # the placer already asked for it to go
    gpu_memory_bytes: int = 0  # on its server's GPU, like memory_bytes (0 on a server without one)


@dataclass(frozen=True)
class DeploymentView:
    model_id: str
    version_id: str
    name: str  # for reasons: the model's name
    scaling: ScalingSettings
    memory_bytes: int  # what one replica of the version takes (measured, or estimated from its size)
    demand: bool = False  # a request waits for a replica (``deployments.demand_at``)
    autoscale: str | None = None  # UP, DOWN or None (see :func:`observe`)
    failed: bool = False  # placement_error is set now
    gpu_memory_bytes: int = 0  # what one replica takes on a GPU, where its server has one (measured, or estimated)
    # what it surely takes: its last measure, or its weights once per session before one (0: memory_bytes)
    least_memory_bytes: int = 0


@dataclass(frozen=True)
class Assign:
    model_id: str
    version_id: str
    server_id: str
    memory_bytes: int
    action: str  # assign (a replica it needs) or scale_up
    reason: str
    gpu_memory_bytes: int = 0  # 0 on a server without a GPU


@dataclass(frozen=True)
class Evict:
    model_id: str
    version_id: str
    server_id: str
    action: str  # evict (room, idle, version switch) or scale_down
    reason: str


@dataclass
class Decisions:
    assign: list[Assign] = field(default_factory=list)
    evict: list[Evict] = field(default_factory=list)
    fail: dict[str, str] = field(default_factory=dict)  # model id → why it cannot be placed
    unfail: list[str] = field(default_factory=list)  # model ids whose placement error no longer holds
    clear_demand: list[str] = field(default_factory=list)  # model ids with a ready replica: demand met
    waiting: dict[str, str] = field(default_factory=dict)  # model id → why a needed replica is not placed yet


def place(
    servers: Iterable[ServerView], replicas: Iterable[ReplicaView], deployments: Iterable[DeploymentView]
) -> Decisions:
    """One pass: what to assign, evict, fail, and which demands are met."""
    return _Pass(servers, replicas, deployments).run()


class _Pass:
    """The state of one :func:`place` pass: memory held per server and the replicas already on their way out."""

    servers: dict[str, ServerView]
    replicas: list[ReplicaView]
    deployments: dict[str, DeploymentView]  # by model id
    held: dict[str, int]  # bytes per server: every replica that did not fail, placed ones included
    held_gpu: dict[str, int]  # the same on each server's GPU
    evicted: set[tuple[str, str]]  # (server id, version id)
    decisions: Decisions

    def __init__(
        self, servers: Iterable[ServerView], replicas: Iterable[ReplicaView], deployments: Iterable[DeploymentView]
    ) -> None:
        self.servers = {s.id: s for s in servers}
        self.replicas = [r for r in replicas if r.server_id in self.servers]
        largest = max((s.budget_bytes for s in self.servers.values()), default=0)
        self.deployments = {d.model_id: _within(d, largest) for d in deployments}
        self.held = defaultdict(int)
        self.held_gpu = defaultdict(int)
        for replica in self.replicas:
            if replica.status != FAILED:
                self.held[replica.server_id] += replica.memory_bytes
                self.held_gpu[replica.server_id] += replica.gpu_memory_bytes
        self.evicted = {(r.server_id, r.version_id) for r in self.replicas if r.evicting}
        self.decisions = Decisions()

    def run(self) -> Decisions:
        needs: list[tuple[int, DeploymentView, str, str]] = []  # (priority, deployment, action, reason)
        for deployment in self.deployments.values():
            needs.extend(self._scale(deployment))
            self._check_fits(deployment)
        for server in self.servers.values():
            self._relieve(server)
        for _, deployment, action, reason in sorted(needs, key=lambda need: need[0]):
            if deployment.model_id not in self.decisions.fail:
                self._place_one(deployment, action, reason)
        return self.decisions

    def _placed(self, model_id: str, version_id: str | None = None) -> list[ReplicaView]:
        return [
            r
            for r in self.replicas
            if r.model_id == model_id
            and (version_id is None or r.version_id == version_id)
            and r.status in PLACED
            and (r.server_id, r.version_id) not in self.evicted
        ]

    def _evict(self, replica: ReplicaView, action: str, reason: str) -> None:
        self.evicted.add((replica.server_id, replica.version_id))
        self.decisions.evict.append(Evict(replica.model_id, replica.version_id, replica.server_id, action, reason))

    def _scale(self, deployment: DeploymentView) -> list[tuple[int, DeploymentView, str, str]]:
        """Evict what the deployment has too much of; return the replicas it lacks."""
        current = self._placed(deployment.model_id, deployment.version_id)
        ready = [r for r in current if r.status == READY]
        scaling = deployment.scaling
        if deployment.demand and ready:
            self.decisions.clear_demand.append(deployment.model_id)
        if ready:  # a version switch: the old version's replicas leave once the new one serves
            for old in self._placed(deployment.model_id):
                if old.version_id != deployment.version_id:
                    self._evict(old, "evict", f"{VERSION_SWITCH}: the deployed version of {deployment.name} is ready")
        ceiling = min(scaling.max_replicas, len(self.servers))
        count = len(current)
        needs = []
        if count < min(scaling.min_replicas, ceiling):
            reason = f"min_replicas is {scaling.min_replicas}"
            needs = [(0, deployment, "assign", reason)] * (min(scaling.min_replicas, ceiling) - count)
        elif deployment.demand and count == 0:
            needs = [(0, deployment, "assign", "demand: a request waits (or a PUT), and no replica is placed")]
        elif deployment.autoscale == UP and count < ceiling and len(ready) == count:
            needs = [(1, deployment, "scale_up", f"in-flight per replica above {scaling.target_concurrency}")]
        elif count > ceiling:  # max_replicas was lowered: the quietest go
            for replica in sorted(ready or current, key=lambda r: (r.in_flight, -r.idle_s))[: count - ceiling]:
                self._evict(replica, "scale_down", f"{SCALE_DOWN}: max_replicas is {scaling.max_replicas}")
            count = ceiling
        elif deployment.autoscale == DOWN and count > max(scaling.min_replicas, 1):
            quietest = min(ready or current, key=lambda r: (r.in_flight, -r.idle_s))
            reason = f"{SCALE_DOWN}: in-flight per replica well below {scaling.target_concurrency}"
            self._evict(quietest, "scale_down", reason)
            count -= 1
        if not deployment.demand:  # idle replicas go, down to min_replicas; a waiting request keeps them
            idle = sorted(
                (r for r in ready if r.idle_s >= scaling.idle_timeout_s and r.in_flight == 0 and self._live(r)),
                key=lambda r: -r.idle_s,
            )
            for replica in idle[: max(0, count - scaling.min_replicas)]:
                reason = f"{IDLE}: no request for {replica.idle_s:.0f} s (idle_timeout_s {scaling.idle_timeout_s})"
                self._evict(replica, "evict", reason)
        return needs

    def _live(self, replica: ReplicaView) -> bool:
        return (replica.server_id, replica.version_id) not in self.evicted

    def _check_fits(self, deployment: DeploymentView) -> None:
        """A version bigger than every budget fails its deployment (with the reason) instead of thrashing."""
        if not self.servers:
            return
        largest = max(s.budget_bytes for s in self.servers.values())
        in_memory = [s for s in self.servers.values() if deployment.memory_bytes <= s.budget_bytes]
        if deployment.memory_bytes > largest:
            self.decisions.fail[deployment.model_id] = (
                f"version needs {_mib(deployment.memory_bytes)} of memory; the largest model server budget is "
                f"{_mib(largest)} (MAAS_MODEL_SERVER_MEMORY_BYTES)"
            )
        elif all(0 < s.gpu_budget_bytes < deployment.gpu_memory_bytes for s in in_memory):
            largest_gpu = max(s.gpu_budget_bytes for s in in_memory)
            self.decisions.fail[deployment.model_id] = (
                f"version needs {_mib(deployment.gpu_memory_bytes)} of GPU memory; the largest GPU budget of a "
                f"model server with room for its memory is {_mib(largest_gpu)} (MAAS_MODEL_SERVER_GPU_MEMORY_BYTES)"
            )
        elif deployment.failed:
            self.decisions.unfail.append(deployment.model_id)

    def _relieve(self, server: ServerView) -> None:
        """A server over its budget (a load measured more than its estimate) sheds idle replicas until within it."""
        over = self.held[server.id] - self._leaving(server.id) - server.budget_bytes
        over_gpu = self.held_gpu[server.id] - self._leaving(server.id, gpu=True) - server.gpu_budget_bytes
        over_gpu = over_gpu if server.gpu_budget_bytes else 0
        if over <= 0 and over_gpu <= 0:
            return
        budgets = [f"its budget of {_mib(server.budget_bytes)}"] if over > 0 else []
        budgets += [f"its GPU budget of {_mib(server.gpu_budget_bytes)}"] if over_gpu > 0 else []
        reason = f"{ROOM}: the server holds more than {' and '.join(budgets)}"
        for victim in self._victims(server, over, over_gpu) or []:
            self._evict(victim, "evict", reason)

    def _leaving(self, server_id: str, gpu: bool = False) -> int:
        """Memory (``gpu``: GPU memory) on its way out of a server: replicas being evicted."""
        return sum(
            r.gpu_memory_bytes if gpu else r.memory_bytes
            for r in self.replicas
            if r.server_id == server_id and not self._live(r) and r.status != FAILED
        )

    def _place_one(self, deployment: DeploymentView, action: str, reason: str) -> None:
        need = deployment.memory_bytes
        taken = {r.server_id for r in self.replicas if r.version_id == deployment.version_id}
        taken |= {a.server_id for a in self.decisions.assign if a.version_id == deployment.version_id}
        spread: dict[str, int] = defaultdict(int)  # replicas of this model per server, any version
        for r in self._placed(deployment.model_id):
            spread[r.server_id] += 1
        candidates = sorted(
            (s for s in self.servers.values() if s.id not in taken),
            key=lambda s: (spread[s.id], -(s.budget_bytes - self.held[s.id]), s.id),
        )
        if not candidates:
            self.decisions.waiting[deployment.model_id] = "every model server already holds this version"
            return
        for server in candidates:
            if max(self._lacks(server, deployment)) <= 0:
                gpu_need = deployment.gpu_memory_bytes if server.gpu_budget_bytes else 0
                self.held[server.id] += need
                self.held_gpu[server.id] += gpu_need
                assign = Assign(deployment.model_id, deployment.version_id, server.id, need, action, reason, gpu_need)
                self.decisions.assign.append(assign)
                return
        lacks = {s.id: self._lacks(s, deployment, leaving=True) for s in candidates}
        if any(max(lacks[s.id]) <= 0 for s in candidates):
            self.decisions.waiting[deployment.model_id] = "waiting for evicted replicas to unload"
            return
        for server in candidates:
            chosen = self._victims(server, *lacks[server.id])
            if chosen is not None:
                for victim in chosen:
                    reason = f"{ROOM}: least recently used idle replica, evicted for {deployment.name} ({_mib(need)})"
                    self._evict(victim, "evict", reason)
                self.decisions.waiting[deployment.model_id] = f"evicting {len(chosen)} replica(s) to make room"
                return
        gpu = any(s.gpu_budget_bytes for s in candidates) and deployment.gpu_memory_bytes
        also = f" (and {_mib(deployment.gpu_memory_bytes)} of GPU memory where it has a GPU)" if gpu else ""
        self.decisions.waiting[deployment.model_id] = (
            f"no model server has {_mib(need)} free{also}, and every replica it could evict is busy or pinned"
        )

    def _lacks(self, server: ServerView, deployment: DeploymentView, leaving: bool = False) -> tuple[int, int]:
        """The memory and GPU memory ``server`` lacks for one more replica of ``deployment`` (≤ 0: it has room),
        counting what evicted replicas hold as free when ``leaving``. A server without a GPU lacks none."""
        memory = deployment.memory_bytes - server.budget_bytes + self.held[server.id]
        if not server.gpu_budget_bytes:
            return memory - (self._leaving(server.id) if leaving else 0), 0
        gpu = deployment.gpu_memory_bytes - server.gpu_budget_bytes + self.held_gpu[server.id]
        if leaving:
            return memory - self._leaving(server.id), gpu - self._leaving(server.id, gpu=True)
        return memory, gpu

    def _victims(self, server: ServerView, missing: int, missing_gpu: int = 0) -> list[ReplicaView] | None:
        """The least recently used idle replicas on ``server`` that free ``missing`` bytes of memory and
        ``missing_gpu`` of GPU memory, or None; one that frees neither short one is passed over."""
        counts = {m: len(self._placed(m, d.version_id)) for m, d in self.deployments.items()}
        chosen: list[ReplicaView] = []
        freed = freed_gpu = 0
        idle_first = sorted(
            (r for r in self.replicas if r.server_id == server.id and r.status == READY and r.in_flight == 0),
            key=lambda r: -r.idle_s,
        )
        for victim in idle_first:
            if not self._live(victim):
                continue
            frees_memory = freed < missing and victim.memory_bytes > 0
            if not frees_memory and not (freed_gpu < missing_gpu and victim.gpu_memory_bytes > 0):
                continue  # evicting it would free nothing that is short
            owner = self.deployments.get(victim.model_id)
            current = owner is not None and owner.version_id == victim.version_id
            if owner is not None and current:
                if counts[victim.model_id] <= owner.scaling.min_replicas:
                    continue  # pinned: its deployment would fall below min_replicas
                if owner.demand:
                    continue  # it was just asked for
                counts[victim.model_id] -= 1
            chosen.append(victim)
            freed += victim.memory_bytes
            freed_gpu += victim.gpu_memory_bytes
            if freed >= missing and freed_gpu >= missing_gpu:
                return chosen
        return None


def _within(deployment: DeploymentView, largest: int) -> DeploymentView:
    """A version whose estimate is more than the largest budget, but what it surely takes fits, is placed as if it
    took a whole server: its load measures it (an estimate errs high on purpose). One whose sure size does not
    fit needs at least that."""
    least = deployment.least_memory_bytes
    if not least or deployment.memory_bytes <= largest:
        return deployment
    return replace(deployment, memory_bytes=least if least > largest else largest)


@dataclass(frozen=True)
class Trend:
    """How long a deployment's load has stayed above target, or well below it (monotonic seconds)."""

    above_since: float | None = None
    below_since: float | None = None


def observe(trend: Trend, in_flight: int, replicas: int, target: int, now: float) -> Trend:
    """The trend after one look at a deployment's in-flight requests over its ready replicas."""
    if replicas <= 0:
        return Trend()
    per_replica = in_flight / replicas
    above = per_replica > target
    below = per_replica < target * WELL_BELOW
    return Trend(
        above_since=(trend.above_since if trend.above_since is not None else now) if above else None,
        below_since=(trend.below_since if trend.below_since is not None else now) if below else None,
    )


def autoscale_signal(trend: Trend, now: float, *, upscale_delay_s: float, downscale_delay_s: float) -> str | None:
    """UP when the load stayed above target for ``upscale_delay_s``, DOWN when well below for ``downscale_delay_s``."""
    if trend.above_since is not None and now - trend.above_since >= upscale_delay_s:
        return UP
    if trend.below_since is not None and now - trend.below_since >= downscale_delay_s:
        return DOWN
    return None


def estimated_memory(measured: int | None, artifact_bytes: int, factor: float) -> int:
    """What to reserve for one replica of a version: its last measure and ``MEASURE_MARGIN`` (a load may measure
    a little more than the one before), or its file's size times ``factor`` before one."""
    if measured:
        return max(int(measured * (1 + MEASURE_MARGIN)), artifact_bytes)
    return int(artifact_bytes * factor)


def evict_kind(reason: str | None) -> str:
    """The kind of an ``evict_reason`` (IDLE, ROOM, SCALE_DOWN, VERSION_SWITCH), or ``undeployed`` without one."""
    if not reason:
        return "undeployed"
    return reason.split(":", 1)[0]


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"
