"""Weighted fair share: which queued jobs start next, given the free worker slots. Pure: no I/O.

The dispatcher (``workers.dispatcher``) reads the state from PostgreSQL, asks :func:`plan` which
jobs to send, and sends exactly those. The method:

- **Slots.** Each live worker runs ``concurrency`` jobs at once from its queues. A queue's load is
  its running jobs plus the jobs sent to it and not yet claimed. A job may be sent to queue ``q``
  only while every set of queues ``Q`` containing ``q`` still fits the workers that serve any of
  them: ``load(Q) + 1 ≤ slots(Q)`` (Hall's condition; with one pool per queue it is simply
  ``load(q) < slots(q)``, and a worker shared by several queues is never counted twice). So the
  broker holds at most what the workers can start now, and the rest of the demand stays in
  PostgreSQL, in order.
- **Fair share between tenants.** A tenant's usage of a queue, in slots, is what it holds there now
  (running plus sent) plus its recent job-seconds on that queue, each second decayed by half every
  ``half_life_s`` and divided by ``half_life_s`` (a tenant that kept one slot busy for a long time
  counts about 1.44 more). The next slot goes to the tenant with the least usage divided by its
  weight (default 1); each job sent adds 1 to its usage. Ties go to the oldest job. A tenant's burst
  therefore waits behind another tenant's single job, which takes the first slot that frees up.
- **Within a tenant**: higher ``priority`` first, then first come, first served.
- **Limits**: a tenant never holds more than its ``running_jobs_<type>`` quota (``core.quotas``) of
  one type; its next job of another type may still go.

Not modelled: a multi-node job's other nodes, asynchronous predictions and webhook deliveries also
take slots in the same worker pools; they only delay a sent job in the broker, never lose it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

# past this many job queues the exact check over every set of queues is replaced by the queues one
# by one plus all of them together (2^12 sets per job sent is still cheap; real deployments have ~4)
MAX_EXACT_QUEUES = 12


@dataclass(frozen=True)
class Candidate:
    """A queued job waiting for a slot. ``order`` sorts by arrival (a time-ordered id)."""

    job_id: str
    tenant_id: str
    job_type: str
    queue: str
    priority: int = 0
    order: str = ""

    @property
    def rank(self) -> tuple[int, str]:
        return (-self.priority, self.order or self.job_id)


@dataclass(frozen=True)
class WorkerSlots:
    """One live worker: the job queues it consumes and how many jobs it runs at once."""

    queues: frozenset[str]
    concurrency: int


@dataclass
class State:
    """What the dispatcher knows at one moment.

    ``load``: per queue, jobs running or sent and not yet claimed. ``held``: per (tenant, job type),
    the same counted per tenant (what the running-jobs quota limits). ``recent_seconds``: per
    (queue, tenant), decayed job-seconds (see the module docstring). ``limits``: per (tenant, job
    type), the most jobs it may hold; absent: no limit. ``weights``: per tenant, default 1.
    """

    workers: Sequence[WorkerSlots]
    candidates: Sequence[Candidate]
    load: Mapping[str, int] = field(default_factory=dict)
    held: Mapping[tuple[str, str], int] = field(default_factory=dict)
    held_on_queue: Mapping[tuple[str, str], int] = field(default_factory=dict)
    recent_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    limits: Mapping[tuple[str, str], int] = field(default_factory=dict)
    weights: Mapping[str, int] = field(default_factory=dict)
    half_life_s: float = 3600.0


def usage(held_now: int, recent_seconds: float, half_life_s: float) -> float:
    """A tenant's usage of a queue in slots: what it holds now plus its decayed recent job-seconds."""
    return held_now + recent_seconds / half_life_s


def queue_sets(workers: Iterable[WorkerSlots]) -> list[frozenset[str]]:
    """The sets of queues whose load :func:`plan` checks against the slots of the workers serving them."""
    queues = sorted({q for w in workers for q in w.queues})
    if len(queues) > MAX_EXACT_QUEUES:
        return [frozenset([q]) for q in queues] + [frozenset(queues)]
    return [frozenset(c) for size in range(1, len(queues) + 1) for c in combinations(queues, size)]


class _Slots:
    """The Hall check of one queue more, and its bookkeeping."""

    def __init__(self, workers: Sequence[WorkerSlots], load: Mapping[str, int]):
        self.load = dict(load)
        self.sets = [(qs, sum(w.concurrency for w in workers if w.queues & qs)) for qs in queue_sets(workers)]

    def fits(self, queue: str) -> bool:
        return any(queue in qs for qs, _ in self.sets) and all(
            sum(self.load.get(q, 0) for q in qs) + 1 <= slots for qs, slots in self.sets if queue in qs
        )

    def take(self, queue: str) -> None:
        self.load[queue] = self.load.get(queue, 0) + 1


def free_slots(workers: Sequence[WorkerSlots], load: Mapping[str, int], queue: str) -> int:
    """How many more jobs ``queue`` could be sent now, if no other queue took any."""
    slots, free = _Slots(workers, load), 0
    while slots.fits(queue):
        slots.take(queue)
        free += 1
    return free


def plan(state: State) -> list[Candidate]:
    """The candidates to send now, in the order they were chosen."""
    slots = _Slots(state.workers, state.load)
    held = dict(state.held)
    held_on_queue = dict(state.held_on_queue)
    waiting: dict[tuple[str, str], list[Candidate]] = {}
    for c in sorted(state.candidates, key=lambda c: c.rank):
        waiting.setdefault((c.queue, c.tenant_id), []).append(c)

    def allowed(c: Candidate) -> bool:
        limit = state.limits.get((c.tenant_id, c.job_type))
        return limit is None or held.get((c.tenant_id, c.job_type), 0) < limit

    def share(queue: str, tenant: str) -> float:
        now = usage(
            held_on_queue.get((queue, tenant), 0), state.recent_seconds.get((queue, tenant), 0.0), state.half_life_s
        )
        return now / max(state.weights.get(tenant, 1), 1)

    chosen: list[Candidate] = []
    while True:
        best: tuple[float, str, Candidate] | None = None
        for (queue, tenant), jobs in waiting.items():
            if not jobs or not slots.fits(queue):
                continue
            head = next((c for c in jobs if allowed(c)), None)
            if head is None:
                continue
            key = (share(queue, tenant), head.order or head.job_id, head)
            if best is None or key[:2] < best[:2]:
                best = key
        if best is None:
            return chosen
        pick = best[2]
        waiting[(pick.queue, pick.tenant_id)].remove(pick)
        slots.take(pick.queue)
        held[(pick.tenant_id, pick.job_type)] = held.get((pick.tenant_id, pick.job_type), 0) + 1
        held_on_queue[(pick.queue, pick.tenant_id)] = held_on_queue.get((pick.queue, pick.tenant_id), 0) + 1
        chosen.append(pick)
