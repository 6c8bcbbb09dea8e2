"""The fair-share policy (core.fair_share) on hand-made states: slots per queue (and a worker
shared by two queues counted once), the least-used tenant first, weights, priority then arrival
within a tenant, the running-jobs quota per type, and the decayed usage."""

from __future__ import annotations

from core.fair_share import Candidate, State, WorkerSlots, free_slots, plan, usage

POOL = [WorkerSlots(frozenset({"q"}), 2)]


def jobs(tenant: str, count: int, *, start: int = 0, job_type: str = "t", queue: str = "q") -> list[Candidate]:
    return [Candidate(f"job_{tenant}{i:03d}", tenant, job_type, queue, 0, f"{start + i:04d}") for i in range(count)]


def ids(chosen: list[Candidate]) -> list[str]:
    return [c.job_id for c in chosen]


def test_no_more_jobs_are_sent_than_the_workers_have_free_slots():
    state = State(workers=POOL, candidates=jobs("a", 20), load={"q": 1}, held_on_queue={("q", "a"): 1})
    assert ids(plan(state)) == ["job_a000"]
    assert plan(State(workers=POOL, candidates=jobs("a", 20), load={"q": 2})) == []
    assert plan(State(workers=[], candidates=jobs("a", 3))) == []


def test_a_burst_waits_while_another_tenants_single_job_takes_the_free_slot():
    # A holds both slots with its burst; one frees up (load 1): B's job, queued last, goes first
    burst, single = jobs("a", 18, start=0), jobs("b", 1, start=100)
    state = State(
        workers=POOL,
        candidates=[*burst, *single],
        load={"q": 1},
        held={("a", "t"): 1},
        held_on_queue={("q", "a"): 1},
    )
    assert ids(plan(state)) == ["job_b000"]


def test_between_equal_tenants_the_slots_alternate_and_ties_go_to_the_oldest_job():
    state = State(
        workers=[WorkerSlots(frozenset({"q"}), 4)], candidates=[*jobs("a", 5, start=0), *jobs("b", 5, start=1)]
    )
    assert ids(plan(state)) == ["job_a000", "job_b000", "job_a001", "job_b001"]


def test_recent_use_counts_against_a_tenant_even_when_it_holds_nothing_now():
    state = State(
        workers=POOL,
        candidates=[*jobs("a", 2, start=0), *jobs("b", 2, start=10)],
        recent_seconds={("q", "a"): 7200.0},  # a kept two slots busy for a half-life
        half_life_s=3600.0,
    )
    assert ids(plan(state)) == ["job_b000", "job_b001"]


def test_a_heavier_weight_gets_proportionally_more_slots():
    state = State(
        workers=[WorkerSlots(frozenset({"q"}), 6)],
        candidates=[*jobs("a", 6, start=0), *jobs("b", 6, start=1)],
        weights={"a": 2},
    )
    chosen = ids(plan(state))
    assert sum(j.startswith("job_a") for j in chosen) == 4 and sum(j.startswith("job_b") for j in chosen) == 2


def test_within_a_tenant_higher_priority_first_then_first_come_first_served():
    low = Candidate("job_old", "a", "t", "q", 0, "0001")
    high = Candidate("job_urgent", "a", "t", "q", 5, "0003")
    later = Candidate("job_new", "a", "t", "q", 0, "0002")
    state = State(workers=[WorkerSlots(frozenset({"q"}), 3)], candidates=[low, later, high])
    assert ids(plan(state)) == ["job_urgent", "job_old", "job_new"]


def test_the_running_jobs_quota_holds_a_tenant_back_per_type_not_its_other_types():
    state = State(
        workers=[WorkerSlots(frozenset({"q"}), 4)],
        candidates=[*jobs("a", 3, job_type="big"), *jobs("a", 1, start=50, job_type="small")],
        held={("a", "big"): 1},
        limits={("a", "big"): 2},
    )
    chosen = plan(state)
    assert [c.job_type for c in chosen].count("big") == 1  # 1 held + 1 sent = the limit of 2
    assert [c.job_type for c in chosen].count("small") == 1
    assert len(chosen) == 2  # the other two slots stay free: what is left is over the quota


def test_a_worker_serving_two_queues_is_not_counted_twice():
    shared = [WorkerSlots(frozenset({"x", "y"}), 2), WorkerSlots(frozenset({"y"}), 1)]
    assert free_slots(shared, {}, "x") == 2
    assert free_slots(shared, {"y": 1}, "x") == 2  # y's job may run on the y-only worker
    assert free_slots(shared, {"y": 2}, "x") == 1
    assert free_slots(shared, {"y": 3}, "x") == 0
    state = State(workers=shared, candidates=[*jobs("a", 5, queue="x"), *jobs("b", 5, start=1, queue="y")])
    chosen = plan(state)
    assert len(chosen) == 3 and sum(c.queue == "x" for c in chosen) <= 2


def test_usage_is_what_a_tenant_holds_plus_its_decayed_seconds_in_slots():
    assert usage(2, 0.0, 60.0) == 2
    assert usage(0, 30.0, 60.0) == 0.5
