"""The OpenAPI document: component names stand for one class each, and the real app's document builds.

``components.schemas`` is keyed by class name, so two different classes with one name would
silently overwrite each other; the document refuses them, naming both.
"""

from __future__ import annotations

import re

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
