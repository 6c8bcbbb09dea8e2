"""The model registry over HTTP: models, their versions (signature, metrics, lineage, artifact), and
registering an uploaded ONNX file as a new version; deleting a version (409 while deployed)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from api.context import context
from api.deleting import run_delete
from api.endpoints import Call, Endpoints
from api.pagination import Page, PageQuery, make_page, page_statement
from api.problems import not_found, validation_problem
from core.deletion import delete_version as delete_version_rows
from core.ids import new_id
from core.model_registry import register_version, valid_name
from core.models import Artifact, File, Model, ModelVersion
from core.objects import DeletedModelVersion, ModelObject, ModelVersionObject
from core.spec_kit import FILE_ID_PATTERN, MODEL_NAME_PATTERN, StrictModel, version_number

models = Endpoints("models")


class VersionCreate(StrictModel):
    file_id: str = Field(
        pattern=FILE_ID_PATTERN, description="an uploaded file with purpose `model` and format .onnx (`file_…`)"
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="what you measured of it (accuracy…)")


class VersionList(BaseModel):
    object: str = Field(default="list", description="always `list`")
    data: list[ModelVersionObject] = Field(description="the model's versions, oldest first")


def model_name(call: Call[Any, Any]) -> str:
    """The ``{name}`` of the path; a name no model can have is a 404."""
    name = call.params["name"]
    if not valid_name(name):
        raise not_found("model", name)
    return name


@models.get("/v1/models", summary="List models, newest first", query=PageQuery, response=Page[ModelObject])
async def list_models(request: web.Request, call: Call[None, PageQuery]) -> Page[ModelObject]:
    latest = select(func.max(ModelVersion.version)).where(ModelVersion.model_id == Model.id).scalar_subquery()
    statement = page_statement(
        select(Model, latest.label("latest")).where(Model.tenant_id == call.tenant_id), Model.id, call.query
    )
    async with context(request).db() as session:
        rows = list((await session.execute(statement)).all())
    return make_page(
        rows,
        call.query,
        lambda row: ModelObject.from_row(row[0], latest_version=row[1]),
        cursor=lambda row: row[0].id,
    )


async def _versions(request: web.Request, tenant_id: str, name: str, version: int | None = None):
    statement = (
        select(ModelVersion, Artifact)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(Artifact, Artifact.id == ModelVersion.artifact_id)
        .where(Model.tenant_id == tenant_id, Model.name == name)
        .order_by(ModelVersion.version)
    )
    if version is not None:
        statement = statement.where(ModelVersion.version == version)
    async with context(request).db() as session:
        return list((await session.execute(statement)).all())


@models.get(
    "/v1/models/{name}/versions", summary="A model's versions, oldest first", response=VersionList, errors=(404,)
)
async def list_versions(request: web.Request, call: Call[None, None]) -> VersionList:
    name = model_name(call)
    rows = await _versions(request, call.tenant_id, name)
    if not rows:
        raise not_found("model", name)
    return VersionList(data=[ModelVersionObject.from_row(v, name, a) for v, a in rows])


@models.get(
    "/v1/models/{name}/versions/{version}", summary="One model version", response=ModelVersionObject, errors=(404,)
)
async def get_version(request: web.Request, call: Call[None, None]) -> ModelVersionObject:
    name, raw = model_name(call), call.params["version"]
    number = version_number(raw)
    rows = await _versions(request, call.tenant_id, name, number) if number is not None else []
    if not rows:
        raise not_found(f"version of model {name!r}", raw)
    version, artifact = rows[0]
    return ModelVersionObject.from_row(version, name, artifact)


@models.post(
    "/v1/models/{name}/versions",
    summary=f"Register an uploaded ONNX file as the model's next version (names match {MODEL_NAME_PATTERN})",
    body=VersionCreate,
    response=ModelVersionObject,
    status=201,
    idempotent=True,
    errors=(404,),
)
async def create_version(request: web.Request, call: Call[VersionCreate, None]) -> ModelVersionObject:
    name = call.params["name"]
    if not valid_name(name):
        raise validation_problem([{"pointer": "", "detail": f"model names match {MODEL_NAME_PATTERN}"}])
    body = call.body

    def register(session) -> ModelVersionObject:
        file = session.scalar(select(File).where(File.id == body.file_id, File.tenant_id == call.tenant_id))
        if file is None:
            raise validation_problem([{"pointer": "/file_id", "detail": "no such file"}])
        if file.format != "onnx":
            raise validation_problem(
                [{"pointer": "/file_id", "detail": f"a .onnx model file is needed, not .{file.format}"}]
            )
        artifact = Artifact(
            id=new_id("artifact"),
            tenant_id=call.tenant_id,
            job_id=None,
            kind="model",
            name=file.filename,
            bytes=file.bytes,
            sha256=file.sha256,
            storage_key=file.storage_key,
        )
        session.add(artifact)
        session.flush()
        version = register_version(
            session,
            tenant_id=call.tenant_id,
            name=name,
            artifact=artifact,
            signature=file.details["signature"],
            metrics=body.metrics,
            lineage={"source": {"file_id": file.id, "filename": file.filename}},
        )
        rendered = ModelVersionObject.from_row(version, name, artifact)
        if call.idempotency:
            call.idempotency.record(session, 201, rendered.model_dump(mode="json"))
        return rendered

    async with context(request).db() as session:
        rendered = await session.run_sync(register)
        await session.commit()
    return rendered


@models.delete(
    "/v1/models/{name}/versions/{version}",
    summary="Delete a model version and its ONNX file (409 while it is deployed or a job uses it); "
    "its number is never given again",
    response=DeletedModelVersion,
    errors=(404, 409),
)
async def delete_version(request: web.Request, call: Call[None, None]) -> DeletedModelVersion:
    name, raw = model_name(call), call.params["version"]
    number = version_number(raw)
    if number is None:
        raise not_found(f"version of model {name!r}", raw)
    rows = await _versions(request, call.tenant_id, name, number)
    if not rows:
        raise not_found(f"version of model {name!r}", raw)
    await run_delete(
        context(request),
        f"version of model {name!r}",
        raw,
        lambda s: delete_version_rows(s, call.tenant_id, name, number),
    )
    return DeletedModelVersion(id=rows[0][0].id, model=name, version=number)
