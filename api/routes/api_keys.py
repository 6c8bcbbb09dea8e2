"""Self-service API keys: a tenant creates, lists and revokes its own keys (rotation without an admin).

The whole key is in the response to its creation and nowhere else, ever.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field
from sqlalchemy import select

from api.context import context
from api.endpoints import Call, Endpoints
from api.pagination import Page, PageQuery, make_page, page_statement
from api.problems import not_found
from core.api_keys import mark_revoked, new_key_row, revocation_notice
from core.models import ApiKey
from core.objects import ApiKeyObject, CreatedApiKey
from core.spec_kit import StrictModel

api_keys = Endpoints("api keys")


class ApiKeyCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200, description="a label to tell keys apart")


@api_keys.post(
    "/v1/api-keys",
    summary="Create an API key for this tenant",
    body=ApiKeyCreate,
    response=CreatedApiKey,
    status=201,
)
async def create_api_key(request: web.Request, call: Call[ApiKeyCreate, None]) -> CreatedApiKey:
    row, key = new_key_row(call.tenant_id, call.body.name)
    async with context(request).db() as session:
        session.add(row)
        await session.commit()
        await session.refresh(row)
    return CreatedApiKey.from_row(row, key)


@api_keys.get("/v1/api-keys", summary="List this tenant's API keys", query=PageQuery, response=Page[ApiKeyObject])
async def list_api_keys(request: web.Request, call: Call[None, PageQuery]) -> Page[ApiKeyObject]:
    statement = page_statement(select(ApiKey).where(ApiKey.tenant_id == call.tenant_id), ApiKey.id, call.query)
    async with context(request).db() as session:
        rows = list(await session.scalars(statement))
    return make_page(rows, call.query, ApiKeyObject.model_validate)


@api_keys.delete(
    "/v1/api-keys/{id}",
    summary="Revoke an API key (it answers 401 from now on)",
    response=ApiKeyObject,
    errors=(404,),
)
async def revoke_api_key(request: web.Request, call: Call[None, None]) -> ApiKeyObject:
    async with context(request).db() as session:
        row = await session.scalar(
            select(ApiKey).where(ApiKey.id == call.params["id"], ApiKey.tenant_id == call.tenant_id)
        )
        if row is None:
            raise not_found("API key", call.params["id"])
        mark_revoked(row)
        await session.execute(revocation_notice(row))
        await session.commit()
    context(request).keys.forget(row.key_hash)  # here at once; other processes on the notice
    return ApiKeyObject.model_validate(row)
