"""The API's cache of accepted keys: used, and forgotten when a key is revoked, by the API or elsewhere."""

from __future__ import annotations

import asyncio

from api.context import CONTEXT
from core.api_keys import revoke_key
from tests.support.eventually import eventually_async

WAIT_S = 10


async def until(condition, what: str) -> None:
    await eventually_async(condition, WAIT_S, what, interval_s=0.02)


async def test_an_accepted_key_is_cached_and_a_revocation_elsewhere_reaches_the_api(api, db, tenant, other_tenant):
    keys = api.server.app[CONTEXT].keys
    await until(lambda: keys.listening, "the revocation channel")
    assert (await api.get("/v1/files", headers=tenant.headers)).status == 200
    assert (await api.get("/v1/files", headers=other_tenant.headers)).status == 200
    assert len(keys.cache) == 2
    assert (await api.get("/v1/files", headers=tenant.headers)).status == 200  # from the cache

    seen = keys.notices

    def revoke() -> None:  # as `maas admin keys revoke` does, in another connection
        with db() as session:
            revoke_key(session, tenant.key_id)
            session.commit()

    await asyncio.to_thread(revoke)
    await until(lambda: keys.notices > seen, "the revocation notice")
    response = await api.get("/v1/files", headers=tenant.headers)
    assert response.status == 401
    assert "revoked" in (await response.json())["detail"]
    assert (await api.get("/v1/files", headers=other_tenant.headers)).status == 200  # the other key is still cached
    assert len(keys.cache) == 1


async def test_a_key_revoked_through_the_api_is_refused_at_once(api, tenant):
    keys = api.server.app[CONTEXT].keys
    await until(lambda: keys.listening, "the revocation channel")
    created = await (await api.post("/v1/api-keys", json={"name": "short-lived"}, headers=tenant.headers)).json()
    second = {"Authorization": f"Bearer {created['key']}"}
    assert (await api.get("/v1/files", headers=second)).status == 200
    assert (await api.delete(f"/v1/api-keys/{created['id']}", headers=tenant.headers)).status == 200
    response = await api.get("/v1/files", headers=second)
    assert response.status == 401
    assert "revoked" in (await response.json())["detail"]
