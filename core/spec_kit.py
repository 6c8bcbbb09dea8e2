"""The spec kit: what every job spec and its checks are built from.

Owns the strict base model, the one error type that names a field (``FieldError``, a JSON
pointer and a detail) and its JSON form (``FieldProblem``), the pointer and pydantic-error
helpers, the shared patterns (object ids, model names), the rules "exactly one of" and "at most
one of" as both a validator error and the JSON schema that states them, and one reader of what the
upload validator stored about a dataset file (``StoredDataset``). Must stay free of torch,
the ORM and the web stack: ``training`` and ``compression`` import it without the service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]
T = TypeVar("T")


def id_pattern(prefix: str) -> str:
    """The pattern of the ids of one kind of object (``core.ids``): ``file_…``, ``job_…``."""
    return rf"^{prefix}_[0-9A-Za-z]{{1,64}}$"


FILE_ID_PATTERN = id_pattern("file")
# a registered model's name (``core.model_registry`` enforces it on every write)
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# what a job may register its result as: a model name without dots or a trailing dash
REGISTER_AS_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
# the largest PostgreSQL ``integer``: the bound of every input that reaches an int4 column
# (a model version number), so that a larger one is a 422, not a database error
INT4_MAX = 2**31 - 1


# the pydantic error type of "give exactly one of a or b": a rule the OpenAPI document states
# (``exactly_one_of``), unlike the cross-field checks only the API can run (``value_error``)
ONE_OF_ERROR = "one_of"


def one_of_error(message: str) -> PydanticCustomError:
    """Raise it from a model validator when not exactly one of the alternatives is given."""
    return PydanticCustomError(ONE_OF_ERROR, message.replace("{", "{{").replace("}", "}}"))


def exactly_one_of(alternatives: Mapping[str, Sequence[str]]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` saying that exactly one of the ``alternatives`` is given (present and
    not null), and the fields each one lists only with it: ``{"file_id": ["label_column"],
    "builtin": []}``. The model's validator enforces the same (raising :func:`one_of_error`)."""

    def extra(schema: dict[str, Any]) -> None:
        branches = []
        for chosen in alternatives:
            absent = [name for other, more in alternatives.items() if other != chosen for name in (other, *more)]
            branches.append(
                {
                    "required": [chosen],
                    "properties": {chosen: {"not": {"type": "null"}}, **{name: {"type": "null"} for name in absent}},
                }
            )
        schema["oneOf"] = branches

    return extra


def at_most_one_of(first: str, second: str) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` saying that ``first`` and ``second`` are not both given (one is absent or null)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [{"properties": {name: {"type": "null"}}} for name in (first, second)]

    return extra


def version_number(text: str) -> int | None:
    """A model version number as a path gives it (ASCII digits, 1 to ``INT4_MAX``), or None."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 1 <= number <= INT4_MAX else None


class StrictModel(BaseModel):
    """A spec part: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class FieldProblem(TypedDict):
    """One reason a request cannot be accepted, as the API reports it."""

    pointer: str
    detail: str


class FieldError(ValueError):
    """Input that does not fit, at ``pointer`` (a JSON pointer into whatever the raiser was given;
    a caller that knows where that sits prefixes it with :meth:`within`)."""

    def __init__(self, pointer: str, detail: str) -> None:
        super().__init__(f"{pointer}: {detail}" if pointer else detail)
        self.pointer, self.detail = pointer, detail

    @property
    def problem(self) -> FieldProblem:
        return {"pointer": self.pointer, "detail": self.detail}

    def within(self, prefix: str) -> FieldError:
        return FieldError(prefix + self.pointer, self.detail)


class OptionError(FieldError):
    """An option that cannot be carried out as given, named by ``field`` (``amount``, ``student``…):
    its pointer is ``/field``, relative to the options object it came from."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"/{field}", detail)
        self.field = field


def json_pointer(loc: Sequence[str | int]) -> str:
    """The RFC 6901 pointer for an error location: ("model", "hidden", 0) → /model/hidden/0."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def validation_problems(exc: ValidationError, prefix: str = "") -> list[FieldProblem]:
    """A pydantic error as field problems, each pointer under ``prefix``."""
    return [{"pointer": prefix + json_pointer(e["loc"]), "detail": e["msg"]} for e in exc.errors(include_url=False)]


def error_details(loc: Loc, message: str, value: Any) -> InitErrorDetails:
    """A pydantic error at ``loc`` with ``message`` as it is (braces are not format fields)."""
    return relocated({"type": "spec_invalid", "msg": message, "input": value}, loc)


def relocated(error: Mapping[str, Any], loc: Loc) -> InitErrorDetails:
    """The pydantic error ``error`` (as ``ValidationError.errors()`` lists it) moved to ``loc``."""
    template = error["msg"].replace("{", "{{").replace("}", "}}")
    return InitErrorDetails(type=PydanticCustomError(error["type"], template), loc=loc, input=error.get("input"))


def relocating(validate: Callable[[Any], T], data: Any, locate: Callable[[Any], InitErrorDetails]) -> T:
    """``validate(data)``, with each error it raises moved by ``locate``: how a spec takes the union
    tags pydantic puts in error locations (``model.mlp.hidden``) out of its pointers."""
    try:
        return validate(data)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(exc.title, [locate(e) for e in exc.errors()]) from None


def error_at(loc: Loc, message: str) -> ValidationError:
    """A validation error at ``loc`` (a field path), for checks pydantic cannot express."""
    return ValidationError.from_exception_data("spec", [error_details(loc, message, None)])


# --- stored upload details ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredArray:
    dtype: str  # numpy's name: "float32", "int64", "<U3"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class StoredColumn:
    name: str
    type: str | None  # Arrow's type name for parquet; None for csv (typed when read)


@dataclass(frozen=True)
class StoredDataset:
    """What the upload validator recorded of a dataset file: the arrays of a ``.npz``, or the
    columns and row count of a ``.csv``/``.parquet``. Read with :func:`stored_dataset`."""

    arrays: Mapping[str, StoredArray] | None = None
    columns: tuple[StoredColumn, ...] | None = None
    rows: int = 0

    @property
    def is_table(self) -> bool:
        return self.columns is not None

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns or ()]


def stored_dataset(details: Mapping[str, Any]) -> StoredDataset:
    """The stored details of an upload (npz ``{"arrays": {name: {dtype, shape}}}``, csv
    ``{"columns": [name…], "rows"}``, parquet ``{"columns": [{name, type}…], "rows"}``);
    ``ValueError`` when they are not a dataset's."""
    if "arrays" in details:
        arrays = {
            name: StoredArray(str(found.get("dtype", "")), tuple(found.get("shape", ())))
            for name, found in details["arrays"].items()
        }
        return StoredDataset(arrays=arrays, rows=min((a.shape[0] for a in arrays.values() if a.shape), default=0))
    if "columns" in details:
        columns = tuple(
            StoredColumn(c["name"], c.get("type")) if isinstance(c, Mapping) else StoredColumn(str(c), None)
            for c in details["columns"]
        )
        return StoredDataset(columns=columns, rows=int(details.get("rows") or 0))
    raise ValueError("the file is not a dataset (npz, csv or parquet)")


def numeric_dtype(dtype: str) -> bool:
    """For numpy's dtype names: "float32", "int64", "bool", "uint8" (not "<U3", "complex64")."""
    return dtype.startswith(("int", "uint", "float", "bool"))


def numeric_column(column: StoredColumn) -> bool:
    """Whether a column holds numbers (a csv column's type is only known once read: assumed)."""
    numeric = ("int", "uint", "float", "double", "halffloat", "bool", "decimal")
    return column.type is None or column.type.startswith(numeric)
