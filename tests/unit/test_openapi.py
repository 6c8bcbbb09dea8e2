"""The OpenAPI document: component names stand for one class each, the real app's document builds, and
it states what the API enforces (exactly one of two, patterns, int4 ranges, required parameters, the
``Idempotency-Key`` header), checked against the models the routes validate with.

``components.schemas`` is keyed by class name, so two different classes with one name would
silently overwrite each other; the document refuses them, naming both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from aiohttp import web
from pydantic import BaseModel, Field, computed_field

from api.endpoints import Call, Endpoints
from api.openapi import SchemaNameClash, openapi_document
from api.pagination import Page


def _table(*responses: type[BaseModel]) -> Endpoints:
    table = Endpoints("things")
    for index, response in enumerate(responses):

        async def handler(request: web.Request, call: Call[None, None]) -> BaseModel:
            raise NotImplementedError

        handler.__name__ = f"get_thing_{index}"
        table.get(f"/v1/things/{index}", summary="a thing", response=response)(handler)
    return table


def _thing_in(module: str, field: str) -> type[BaseModel]:
    """A model named ``Thing``, as if defined in ``module``."""
    thing = type("Thing", (BaseModel,), {"__annotations__": {field: int}, "__module__": module})
    thing.__qualname__ = "Thing"
    return thing


def test_two_models_named_alike_are_refused_naming_both():
    first, second = _thing_in("shop.orders", "count"), _thing_in("shop.stock", "amount")
    with pytest.raises(SchemaNameClash) as raised:
        openapi_document([_table(first, second)])
    assert "'Thing'" in str(raised.value)
    assert "shop.orders.Thing" in str(raised.value) and "shop.stock.Thing" in str(raised.value)


def test_nested_models_named_alike_are_refused_too():
    first, second = _thing_in("shop.orders", "count"), _thing_in("shop.stock", "amount")
    order = type("Order", (BaseModel,), {"__annotations__": {"thing": first}, "__module__": "shop.orders"})
    stock = type("Stock", (BaseModel,), {"__annotations__": {"things": list[second]}, "__module__": "shop.stock"})
    with pytest.raises(SchemaNameClash, match=r"shop\.orders\.Thing.*shop\.stock\.Thing"):
        openapi_document([_table(order, stock)])


def test_a_model_named_like_a_hand_written_schema_is_refused():
    problem = type("Problem", (BaseModel,), {"__annotations__": {"why": str}, "__module__": "shop.errors"})
    with pytest.raises(SchemaNameClash, match="hand-written"):
        openapi_document([_table(problem)])


def test_one_model_used_by_many_endpoints_is_one_schema():
    thing = _thing_in("shop.orders", "count")
    document = openapi_document([_table(thing, thing, Page[thing])])
    schemas = document["components"]["schemas"]
    assert {"Thing", "Page_Thing_"} <= set(schemas)
    assert schemas["Page_Thing_"]["properties"]["data"]["items"] == {"$ref": "#/components/schemas/Thing"}


def test_responses_are_described_as_they_are_serialized():
    class Measured(BaseModel):
        seconds: float = Field(description="how long, in seconds")

        @computed_field(description="the same, in milliseconds")  # type: ignore[prop-decorator]
        @property
        def ms(self) -> float:
            return self.seconds * 1000

    schema = openapi_document([_table(Measured)])["components"]["schemas"]["Measured"]
    assert schema["properties"]["ms"]["readOnly"] is True
    assert set(schema["required"]) == {"seconds", "ms"}


@pytest.fixture(scope="module")
def document() -> dict:
    import api.app  # noqa: F401 - registers the product's job types, as the app does
    from api.routes import ENDPOINT_TABLES

    return openapi_document(ENDPOINT_TABLES)


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node))
    return set()


def test_the_apps_document_builds_with_valid_component_names(document):
    schemas = document["components"]["schemas"]
    assert document["openapi"] == "3.1.0"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in schemas)
    assert {ref.rsplit("/", 1)[1] for ref in _refs(document)} <= set(schemas)


def test_the_job_object_is_documented_as_clients_receive_it(document):
    schemas = document["components"]["schemas"]
    get_job = document["paths"]["/v1/jobs/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert get_job["schema"] == {"$ref": "#/components/schemas/JobObject"}
    job = schemas["JobObject"]
    assert "metadata" in job["properties"] and "metadata_" not in job["properties"]
    assert job["properties"]["created_at"]["format"] == "date-time"
    assert schemas["JobProgress"]["properties"]["fraction"]["readOnly"] is True


def test_every_field_of_the_api_objects_says_what_it_means(document):
    from core import objects

    schemas = document["components"]["schemas"]
    for name in objects.__all__:
        model = getattr(objects, name)
        if not isinstance(model, type) or name not in schemas:
            continue
        undescribed = [field for field, prop in schemas[name]["properties"].items() if not prop.get("description")]
        assert not undescribed, f"{name}: {undescribed} have no description"


# --- the document states what the API enforces --------------------------------------------------


def _spec_schema(document: dict, job_type: str) -> dict:
    """The spec schema the job create's variant for ``job_type`` refers to, resolved."""
    schemas = document["components"]["schemas"]
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for variant in body["oneOf"]:
        extra = variant["allOf"][1]["properties"]
        if extra["type"]["const"] == job_type:
            return schemas[extra["spec"]["$ref"].rsplit("/", 1)[1]]
    raise AssertionError(f"no variant for {job_type}")


@pytest.fixture(scope="module")
def app_document() -> dict:
    """The document as the app serves it: with every job type's spec (its variants need the app)."""
    import api.app
    from api.routes import ENDPOINT_TABLES
    from core.settings import Settings
    from job_types.registry import load_job_types

    app = web.Application()
    app[api.app.CONTEXT] = type("Context", (), {"job_types": load_job_types(Settings())})()
    return openapi_document(ENDPOINT_TABLES, app)


def _validator(document: dict, schema: dict):
    """A JSON Schema validator for ``schema`` with the document's components to resolve refs."""
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


@pytest.mark.parametrize(
    ("job_type", "path", "exactly_one"),
    [
        ("training", ("dataset",), {"file_id", "builtin"}),
        ("training", ("validation",), {"fraction", "file_id"}),
        ("compression", ("source",), {"model", "file_id"}),
        ("compression", ("eval",), {"file_id", "builtin"}),
    ],
)
def test_exactly_one_of_two_is_a_one_of_in_the_document(app_document, job_type, path, exactly_one):
    schemas = app_document["components"]["schemas"]
    node = _spec_schema(app_document, job_type)
    for part in path:
        prop = node["properties"][part]
        ref = next(b["$ref"] for b in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])] if "$ref" in b)
        node = schemas[ref.rsplit("/", 1)[1]]
    assert {branch["required"][0] for branch in node["oneOf"]} == exactly_one


def test_a_dataset_document_and_model_agree_on_exactly_one_source(app_document):
    from pydantic import ValidationError

    from training.spec import DatasetSpec

    validator = _validator(app_document, app_document["components"]["schemas"]["DatasetSpec"])
    for dataset, valid in [
        ({"builtin": "digits"}, True),
        ({"file_id": "file_abc", "label_column": "y"}, True),
        ({"file_id": "file_abc", "builtin": None}, True),
        ({}, False),
        ({"file_id": "file_abc", "builtin": "digits"}, False),
        ({"builtin": "digits", "label_column": "y"}, False),
        ({"file_id": ""}, False),
    ]:
        assert validator.is_valid(dataset) is valid, dataset
        try:
            DatasetSpec.model_validate(dataset)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted is valid, dataset


def test_every_file_id_in_a_body_has_the_file_id_pattern(app_document):
    from core.spec_kit import FILE_ID_PATTERN

    def file_ids(node: object) -> Iterator[dict]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "file_id" and isinstance(value, dict):
                    yield value
                yield from file_ids(value)
        elif isinstance(node, list):
            for item in node:
                yield from file_ids(item)

    found = [
        prop
        for schema in app_document["components"]["schemas"].values()
        for prop in file_ids(schema.get("properties", {}))
    ]
    assert found
    for prop in found:
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        assert [b.get("pattern") for b in branches] == [FILE_ID_PATTERN], prop


def test_versions_are_bounded_by_int4_in_bodies_and_paths(app_document):
    from core.spec_kit import INT4_MAX

    schemas = app_document["components"]["schemas"]
    assert schemas["DeploymentPut"]["properties"]["version"]["maximum"] == INT4_MAX
    parameters = app_document["paths"]["/v1/models/{name}/versions/{version}"]["get"]["parameters"]
    version = next(p for p in parameters if p["name"] == "version")
    assert version["schema"] == {"type": "integer", "minimum": 1, "maximum": INT4_MAX, "description": ANY}


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


def test_path_parameters_have_their_patterns(app_document):
    from core.spec_kit import MODEL_NAME_PATTERN

    for path, operations in app_document["paths"].items():
        for operation in operations.values():
            for parameter in operation["parameters"]:
                if parameter["in"] != "path":
                    continue
                schema = parameter["schema"]
                assert "pattern" in schema or schema["type"] == "integer", (path, parameter)
                if parameter["name"] == "name":
                    assert schema["pattern"] == MODEL_NAME_PATTERN
    file_param = app_document["paths"]["/v1/files/{id}"]["get"]["parameters"][0]
    assert re.fullmatch(file_param["schema"]["pattern"].strip("^$"), "file_01abc")
    assert not re.fullmatch(file_param["schema"]["pattern"].strip("^$"), "job_01abc")


def test_query_parameters_are_never_null_and_an_upload_states_purpose_and_filename(app_document):
    for operations in app_document["paths"].values():
        for operation in operations.values():
            for parameter in operation["parameters"]:
                assert {"type": "null"} not in parameter["schema"].get("anyOf", []), parameter
    upload = {p["name"]: p for p in app_document["paths"]["/v1/files"]["post"]["parameters"]}
    assert upload["purpose"]["required"] and upload["filename"]["required"]
    assert upload["purpose"]["schema"]["enum"] == ["dataset", "model"]
    assert upload["filename"]["schema"]["minLength"] == 1


def test_creates_document_the_idempotency_key_they_check(app_document):
    from api.idempotency import HEADER, KEY_PATTERN

    for path, method in [("/v1/jobs", "post"), ("/v1/predictions", "post"), ("/v1/models/{name}/versions", "post")]:
        operation = app_document["paths"][path][method]
        header = next(p for p in operation["parameters"] if p["in"] == "header")
        assert header["name"] == HEADER and header["schema"]["pattern"] == KEY_PATTERN
        assert {"400", "409", "422"} <= set(operation["responses"])
    assert re.fullmatch(KEY_PATTERN.strip("^$"), "order-1")
    assert not re.fullmatch(KEY_PATTERN.strip("^$"), "two words")


def test_job_metadata_limits_are_in_the_document(app_document):
    metadata = app_document["components"]["schemas"]["JobCreate"]["properties"]["metadata"]
    assert metadata["maxProperties"] == 16
    assert metadata["propertyNames"] == {"minLength": 1, "maxLength": 64}
    assert metadata["additionalProperties"]["maxLength"] == 512


def test_a_path_parameter_without_a_schema_stops_the_build():
    from api.openapi import UndocumentedParameter

    table = Endpoints("things")

    async def get_widget(request: web.Request, call: Call[None, None]) -> BaseModel:
        raise NotImplementedError

    table.get("/v1/widgets/{id}", summary="a widget")(get_widget)
    with pytest.raises(UndocumentedParameter, match="widgets"):
        openapi_document([table])
