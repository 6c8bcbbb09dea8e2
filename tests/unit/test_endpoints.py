from pydantic import BaseModel, ConfigDict, ValidationError

from api.endpoints import body_errors, pointer


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Inner
    tags: list[str] = []


def test_pointer_escapes_per_rfc6901():
    assert pointer(("spec", "a/b", "c~d", 0)) == "/spec/a~1b/c~0d/0"
    assert pointer(()) == ""


def test_validation_errors_point_at_nested_fields():
    try:
        Spec.model_validate({"hyperparameters": {"lr": "fast", "momentum": 0.9}, "tags": ["ok", 3]})
    except ValidationError as exc:
        errors = body_errors(exc)
    pointers = sorted(e["pointer"] for e in errors)
    assert pointers == ["/hyperparameters/lr", "/hyperparameters/momentum", "/tags/1"]


def test_every_handler_is_typed_with_the_models_its_endpoint_parses():
    from typing import get_args, get_type_hints

    import api.app  # noqa: F401 - the app's imports, as it runs
    from api.endpoints import Call
    from api.routes import ENDPOINT_TABLES

    for table in ENDPOINT_TABLES:
        for endpoint in table.items:
            annotation = get_type_hints(endpoint.handler)["call"]
            assert getattr(annotation, "__origin__", None) is Call, f"{endpoint.operation_id}: {annotation}"
            declared = tuple(type(None) if model is None else model for model in (endpoint.body, endpoint.query))
            assert get_args(annotation) == declared, f"{endpoint.operation_id} parses {declared}, says {annotation}"
