"""Typed field access for raw JSON records: a wrong or missing field becomes a Problem, not a KeyError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prospect.data.errors import Problems

_MISSING = object()
# JSON types as a user reads them; bool is excluded from numbers because True is an int in Python.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
}


def json_type_ok(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _TYPES[kind])


def field(record: dict, key: str, kind: str, problems: Problems, where: str, default: Any = _MISSING) -> Any:
    """`record[key]` if it has JSON type `kind`; otherwise a problem at `where` and None (or `default` when
    the key is absent and a default is given)."""
    if key not in record:
        if default is not _MISSING:
            return default
        problems.add(where, f"missing required field ({kind})")
        return None
    value = record[key]
    if not json_type_ok(value, kind):
        problems.add(where, f"expected {kind}, got {type(value).__name__} {_short(value)}")
        return None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def objects(items: list, problems: Problems, prefix: str) -> Iterator[tuple[str, dict]]:
    """(`prefix[i]`, item) for each item of a JSON array that is an object; a problem for each that is not."""
    for i, item in enumerate(items):
        where = f"{prefix}[{i}]"
        if isinstance(item, dict):
            yield where, item
        else:
            problems.add(where, f"expected an object, got {type(item).__name__}")
