"""Tenants and API keys: creation, hashing, revocation.

A key looks like ``maas_<8 chars>_<43 chars>``. The first part (``maas_<8 chars>``)
is its visible prefix, stored in clear so people can tell keys apart; the whole
key is stored only as its sha256 (keys are 256-bit random, so a fast hash is
enough) and shown once, when it is created. A revocation is announced on the
``REVOKED_CHANNEL`` Postgres channel, for the API processes that cache keys.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from core.ids import new_id
from core.models import ApiKey, Tenant

KEY_SCHEME = "maas"
# revocations are announced here (the payload: the key's hash) so that API processes forget cached keys
REVOKED_CHANNEL = "maas_api_key_revoked"


def generate_key() -> tuple[str, str]:
    """A new (key, visible prefix)."""
    prefix = f"{KEY_SCHEME}_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    key: str  # the only time the whole key exists outside the client's hands


class UnknownTenant(LookupError):
    pass


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(id=new_id("tenant"), name=name)
    session.add(tenant)
    session.flush()
    return tenant


def find_tenant(session: Session, id_or_name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where((Tenant.id == id_or_name) | (Tenant.name == id_or_name)))
    if tenant is None:
        raise UnknownTenant(f"no tenant with id or name {id_or_name!r}")
    return tenant


def new_key_row(tenant_id: str, name: str) -> tuple[ApiKey, str]:
    """A new key's row (holding only its hash) and the whole key."""
    key, prefix = generate_key()
    row = ApiKey(id=new_id("api_key"), tenant_id=tenant_id, name=name, prefix=prefix, key_hash=hash_key(key))
    return row, key


def mark_revoked(row: ApiKey) -> None:
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)


def revocation_notice(row: ApiKey) -> Select:
    """Run it in the revoking transaction: on commit, every API process forgets the key (``api.auth``)."""
    return select(func.pg_notify(REVOKED_CHANNEL, row.key_hash))


def create_key(session: Session, tenant: Tenant, name: str = "default") -> CreatedKey:
    row, key = new_key_row(tenant.id, name)
    session.add(row)
    session.flush()
    return CreatedKey(id=row.id, tenant_id=tenant.id, name=name, prefix=row.prefix, key=key)


def revoke_key(session: Session, id_or_prefix: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where((ApiKey.id == id_or_prefix) | (ApiKey.prefix == id_or_prefix)))
    if row is None:
        raise LookupError(f"no API key with id or prefix {id_or_prefix!r}")
    mark_revoked(row)
    session.execute(revocation_notice(row))
    return row


def list_keys(session: Session, tenant: Tenant | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant_id == tenant.id)
    return list(session.scalars(query))
