"""Every handler is typed with the models its endpoint parses."""


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
