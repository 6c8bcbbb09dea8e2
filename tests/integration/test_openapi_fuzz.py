"""Property-based fuzzing of every operation of the API from its own OpenAPI document (schemathesis).

The app runs as it does in production (real PostgreSQL, broker and S3), served from a thread
(``tests.support.live_api``) so that schemathesis can call it synchronously. Tenant B owns a file,
a model version and a job; tenant A's key sends everything the fuzzer generates, a bounded number
of examples per operation, both data the document calls valid and data it calls invalid. Each
answer must be:

- never a 5xx;
- a status the document lists for the operation, with a body that matches the schema it gives
  for that status and content type;
- a 4xx for data the document calls invalid (the document is not looser than the API);
- for data the document calls valid, accepted by the same pydantic models the route validates
  with, apart from the rules no JSON schema can state (cross-field checks): the document is not
  stricter, nor looser, than the API;
- free of tenant B's ids: and every operation that takes an id or a model name, asked by A with
  B's, answers 404.

``MAAS_FUZZ_EXAMPLES`` sets the examples per operation and generation mode (default 40; the run is
derandomized, so CI sees the same examples every time; set ``MAAS_FUZZ_SEED`` to explore others).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from pydantic import BaseModel, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import api.app  # noqa: F401 - registers the product's job types, as the app does
from api.endpoints import Endpoint
from api.routes import ENDPOINT_TABLES
from core.settings import Settings
from job_types.registry import load_job_types
from tests.conftest import Tenant, new_tenant
from tests.support import api as http
from tests.support.datasets import npz
from tests.support.live_api import LiveApi
from tests.support.onnx_models import tiny_onnx

EXAMPLES = int(os.environ.get("MAAS_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("MAAS_FUZZ_SEED")
ENDPOINTS: dict[tuple[str, str], Endpoint] = {(e.method, e.path): e for t in ENDPOINT_TABLES for e in t.items}
JOB_CREATE = ("POST", "/v1/jobs")
JOB_TYPES = load_job_types(Settings(job_type_modules="")).names()  # the product's, as the fuzzed app has
# where a fuzzed webhook goes: loopback's discard port (nothing listens; no traffic leaves the machine)
SAFE_WEBHOOK = "http://127.0.0.1:9/fuzz"
MAX_WEBHOOK_CHARS = 2048
# pydantic error types of rules a JSON schema cannot state (cross-field checks in validators)
CROSS_FIELD_ERRORS = frozenset({"value_error", "spec_invalid", "assertion_error"})
# not_a_server_error is ours (``_no_server_error``): a documented 503 (not ready) is an answer
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@dataclass
class Owned:
    """What tenant B owns: its ids never appear in tenant A's answers."""

    file_id: str
    model: str
    version_id: str
    artifact_id: str
    job_id: str
    event_ids: list[str]
    key_id: str
    tenant_id: str

    @property
    def secrets(self) -> list[str]:
        return [
            self.file_id,
            self.model,
            self.version_id,
            self.artifact_id,
            self.job_id,
            *self.event_ids,
            self.key_id,
            self.tenant_id,
        ]


@dataclass
class Fuzz:
    live: LiveApi
    schema: Any
    variant_schemas: dict[str, Any]  # by job type: the document with the job create's body that type's only
    a: Tenant
    b: Tenant
    owned: Owned
    spec_models: dict[str, type[BaseModel]]


def _fuzz_settings(settings: Settings) -> Settings:
    # only the product's job types: the test ones (test.sleep…) would hold the shared test workers
    return settings.model_copy(update={"job_type_modules": "", "webhook_allow_private_targets": True})


async def _tenant_b_objects(client, b: Tenant) -> Owned:
    file_id = await http.upload(client, b, npz(X=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64)), "b.npz")
    model = f"tenant-b-{secrets.token_hex(4)}"
    version = await http.register_version(client, b, model, tiny_onnx())
    job = await http.create_job(
        client, b, {"type": "training", "spec": {"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}}}
    )
    assert job.status == 201, await job.text()
    job_id = (await job.json())["id"]
    events = await http.job_events(client, b, job_id)
    return Owned(
        file_id=file_id,
        model=model,
        version_id=version["id"],
        artifact_id=version["artifact"]["id"],
        job_id=job_id,
        event_ids=[e["id"] for e in events],
        key_id=b.key_id,
        tenant_id=b.id,
    )


async def _cancel_jobs(client, tenant: Tenant) -> None:
    """Cancel every job the tenant left queued or running (the fuzz may create valid ones)."""
    for status in ("queued", "running"):
        page = await client.get("/v1/jobs", params={"status": status, "limit": "100"}, headers=tenant.headers)
        for job in (await page.json())["data"]:
            await http.cancel_job(client, tenant, job["id"])


@pytest.fixture(scope="module")
def fuzz(settings: Settings, db) -> Iterator[Fuzz]:
    settings = _fuzz_settings(settings)
    a, b = new_tenant(db), new_tenant(db)
    with LiveApi(settings) as live:
        owned = live.run(lambda client: _tenant_b_objects(client, b))
        document = requests.get(f"{live.base_url}/openapi.json", timeout=30).json()
        schema = schemathesis.openapi.from_dict(document)
        variants = {name: schemathesis.openapi.from_dict(_one_variant(document, name)) for name in JOB_TYPES}
        job_types = load_job_types(settings)
        spec_models = {name: job_types[name].spec for name in job_types.names()}
        try:
            yield Fuzz(live, schema, variants, a, b, owned, spec_models)
        finally:
            live.run(lambda client: _cancel_jobs(client, a))
            live.run(lambda client: _cancel_jobs(client, b))


def _one_variant(document: dict[str, Any], job_type: str) -> dict[str, Any]:
    """The document with the job create's body restricted to ``job_type``'s variant, so that every
    job type's spec gets its share of examples (one ``oneOf`` draws some types rarely)."""
    document = copy.deepcopy(document)
    content = document["paths"][JOB_CREATE[1]][JOB_CREATE[0].lower()]["requestBody"]["content"]["application/json"]
    content["schema"] = next(
        variant
        for variant in content["schema"]["oneOf"]
        if variant["allOf"][1]["properties"]["type"]["const"] == job_type
    )
    return document


def _safe_webhooks(case: Any) -> None:
    """Point a fuzzed webhook URL at loopback; a string the API refuses anyway (too long) stays."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("webhook"), str) and len(body["webhook"]) <= MAX_WEBHOOK_CHARS:
        body["webhook"] = SAFE_WEBHOOK


def _schema_errors(model: type[BaseModel], data: Any) -> list[dict[str, Any]]:
    """What ``model`` refuses in ``data`` that a JSON schema could have said (not cross-field rules)."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [e for e in exc.errors(include_url=False) if e["type"] not in CROSS_FIELD_ERRORS]
    return []


def _body_refusals(endpoint: Endpoint, body: Any, spec_models: dict[str, type[BaseModel]]) -> list[dict[str, Any]]:
    """The refusals of a body the document calls valid by the models the route validates it with."""
    if endpoint.body is None or not isinstance(body, dict):
        return []
    errors = _schema_errors(endpoint.body, body)
    spec_model = spec_models.get(body.get("type")) if endpoint.body_variants is not None else None
    if not errors and spec_model is not None:
        errors = _schema_errors(spec_model, body.get("spec"))
    return errors


def _no_server_error(case: Any, response: Any) -> None:
    """No 5xx, but for a 503 or 504 the operation documents (a model not ready, a queue timed out)."""
    status = response.status_code
    documented = str(status) in case.operation.definition.raw["responses"]
    assert status < 500 or (status in (503, 504) and documented), (
        f"{status} from {case.method} {case.formatted_path}: {response.text[:1000]}\n{case.as_curl_command()}"
    )


def _takes_input(endpoint: Endpoint) -> bool:
    """Whether a request to ``endpoint`` can be invalid (it has parameters, a body or a checked header)."""
    return any((endpoint.query, endpoint.body, endpoint.request_doc, endpoint.idempotent, "{" in endpoint.path))


def _leaks(text: str, owned: Owned) -> list[str]:
    return [secret for secret in owned.secrets if secret in text]


OPERATIONS = sorted(ENDPOINTS, key=lambda key: (key[1], key[0]))
# the job create, fuzzed once per job type (its body's schema is one variant per type)
CASES = [(m, p, t) for m, p in OPERATIONS for t in (JOB_TYPES if (m, p) == JOB_CREATE else [None])]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(
    ("method", "path", "job_type"), CASES, ids=[f"{m} {p}" + (f" {t}" if t else "") for m, p, t in CASES]
)
def test_every_operation_answers_as_documented(
    fuzz: Fuzz, method: str, path: str, job_type: str | None, mode: GenerationMode
):
    schema = fuzz.variant_schemas[job_type] if job_type else fuzz.schema
    operation = schema[path][method]
    endpoint = ENDPOINTS[(method, path)]
    if mode is GenerationMode.NEGATIVE and not _takes_input(endpoint):
        pytest.skip("nothing in this request can be invalid")
    session = requests.Session()
    headers = fuzz.a.headers

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        _safe_webhooks(case)
        response = case.call(base_url=fuzz.live.base_url, session=session, headers=headers, timeout=30)
        _no_server_error(case, response)
        case.validate_response(response, checks=CHECKS)
        leaked = _leaks(response.text, fuzz.owned)
        assert not leaked, f"{method} {path} answered tenant A with tenant B's {leaked}: {response.text[:500]}"
        if mode is GenerationMode.POSITIVE:
            refused = _body_refusals(endpoint, case.body, fuzz.spec_models)
            assert not refused, f"the document calls this body valid, the API refuses it: {refused}\n{case.body!r}"

    if SEED is not None:
        check = seed(int(SEED))(check)
    check()


def _path_with(path: str, owned: Owned) -> str | None:
    """``path`` with tenant B's ids in it, or None when it takes no id or model name."""
    ids = {
        "/v1/api-keys/{id}": owned.key_id,
        "/v1/files/{id}": owned.file_id,
        "/v1/jobs/{id}": owned.job_id,
        "/v1/artifacts/{id}": owned.artifact_id,
        "/v1/predictions/{id}": None,
    }
    if "{" not in path:
        return None
    filled = path
    for prefix, value in ids.items():
        if path.startswith(prefix) and value is not None:
            filled = filled.replace("{id}", value)
    filled = filled.replace("{name}", owned.model).replace("{version}", "1")
    return None if "{" in filled else filled


CROSS_TENANT = [(m, p) for m, p in OPERATIONS if "{" in p]


@pytest.mark.parametrize(("method", "path"), CROSS_TENANT, ids=[f"{m} {p}" for m, p in CROSS_TENANT])
def test_another_tenants_ids_are_not_found(fuzz: Fuzz, method: str, path: str):
    filled = _path_with(path, fuzz.owned)
    if filled is None:
        pytest.skip(f"tenant B has no object for {path}")
    body = None
    if method in ("POST", "PUT") and ENDPOINTS[(method, path)].body is not None:
        body = {"version": 1} if path.endswith("/deployment") else {"file_id": fuzz.owned.file_id}
    response = requests.request(
        method, f"{fuzz.live.base_url}{filled}", headers=fuzz.a.headers, json=body, allow_redirects=False, timeout=30
    )
    # registering a version is A naming a model of its own: B's file is what A cannot see (422 /file_id)
    expected = 422 if (method, path) == ("POST", "/v1/models/{name}/versions") else 404
    assert response.status_code == expected, response.text
    sent = filled + json.dumps(body)  # what A sent may be echoed; nothing else of B's may show
    assert not [s for s in _leaks(response.text, fuzz.owned) if s not in sent], response.text
