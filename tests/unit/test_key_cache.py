"""The API's cache of accepted keys: expiry, eviction, forgetting; no services."""

from __future__ import annotations

from datetime import UTC, datetime

from api.auth import KeyCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_served_until_its_time_is_up():
    clock = Clock()
    cache = KeyCache(ttl_s=5, clock=clock)
    used = datetime(2026, 1, 1, tzinfo=UTC)
    cache.put("h1", "key_1", "tenant_1", used)
    clock.now += 4.9
    entry = cache.get("h1")
    assert entry is not None and (entry.key_id, entry.tenant_id, entry.last_used_at) == ("key_1", "tenant_1", used)
    clock.now += 0.1
    assert cache.get("h1") is None
    assert len(cache) == 0  # an expired entry goes at once


def test_putting_again_restarts_the_time():
    clock = Clock()
    cache = KeyCache(ttl_s=5, clock=clock)
    cache.put("h1", "key_1", "tenant_1", None)
    clock.now += 4
    cache.put("h1", "key_1", "tenant_1", None)
    clock.now += 4
    assert cache.get("h1") is not None


def test_forget_and_clear():
    cache = KeyCache(ttl_s=5)
    cache.put("h1", "key_1", "tenant_1", None)
    cache.put("h2", "key_2", "tenant_1", None)
    cache.forget("h1")
    cache.forget("never-seen")
    assert cache.get("h1") is None and cache.get("h2") is not None
    cache.clear()
    assert len(cache) == 0


def test_the_oldest_entries_make_room():
    cache = KeyCache(ttl_s=5, max_entries=2)
    cache.put("h1", "key_1", "t", None)
    cache.put("h2", "key_2", "t", None)
    cache.put("h1", "key_1", "t", None)  # refreshed: now the youngest
    cache.put("h3", "key_3", "t", None)
    assert len(cache) == 2
    assert cache.get("h2") is None
    assert cache.get("h1") is not None and cache.get("h3") is not None


def test_a_zero_ttl_caches_nothing():
    cache = KeyCache(ttl_s=0)
    cache.put("h1", "key_1", "tenant_1", None)
    assert cache.get("h1") is None and len(cache) == 0
