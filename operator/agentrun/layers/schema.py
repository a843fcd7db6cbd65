"""Prepare a user's JSON Schema for structured output.

A model is shown one self-contained schema. References are allowed only into the
schema's own ``$defs`` (``#/$defs/Name``); they are checked and inlined here, so
remote references, references elsewhere in the document, unresolvable names and
recursive definitions are all rejected before any model is called.
"""

from __future__ import annotations

import copy
from typing import Any

RECURSION_MESSAGE = "Recursive $defs refs are not supported for structured output exposure."
LOCAL_PREFIX = "#/$defs/"


class SchemaRejected(ValueError):
    """The output schema cannot be used; the message is shown to the user as is."""


def prepare_output_schema(schema: Any) -> dict[str, Any]:
    """Return ``schema`` with every ``$defs`` reference inlined and ``$defs`` removed.

    Raises :class:`SchemaRejected` for a schema that is not an object schema, that
    references anything outside its own ``$defs``, or whose definitions recurse.
    """
    if not isinstance(schema, dict):
        raise SchemaRejected(f"output jsonSchema must be a JSON object, got {type(schema).__name__}")
    _require_object(schema)
    defs = schema.get("$defs", {})
    if not isinstance(defs, dict):
        raise SchemaRejected("output jsonSchema $defs must be an object of named schemas")
    _reject_recursion(defs)
    body = {key: value for key, value in schema.items() if key != "$defs"}
    inlined = _inline(body, defs)
    assert isinstance(inlined, dict)
    _require_object(inlined)  # a root $ref may have brought in another type
    inlined.setdefault("type", "object")
    return inlined


def _require_object(schema: dict[str, Any]) -> None:
    if schema.get("type", "object") != "object":
        raise SchemaRejected(f"output jsonSchema must describe an object (type: object), got type {schema['type']!r}")


def _def_name(ref: Any) -> str:
    if not isinstance(ref, str):
        raise SchemaRejected(f"$ref must be a string, got {ref!r}")
    if not ref.startswith("#"):
        raise SchemaRejected(f"Remote $ref {ref!r} is not supported: only local '#/$defs/...' refs are allowed.")
    if not ref.startswith(LOCAL_PREFIX):
        raise SchemaRejected(f"$ref {ref!r} points outside '#/$defs/': only local '#/$defs/...' refs are allowed.")
    name = ref.removeprefix(LOCAL_PREFIX)
    if not name or "/" in name:
        raise SchemaRejected(f"$ref {ref!r} must name one definition directly under '#/$defs/'.")
    return name


def _refs(node: Any) -> set[str]:
    """Names of the definitions that ``node`` references directly."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(_def_name(value))
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def _reject_recursion(defs: dict[str, Any]) -> None:
    graph = {name: _refs(definition) for name, definition in defs.items()}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in graph:
            return  # unknown names are reported when inlining, with the referring ref
        if name in visiting:
            raise SchemaRejected(RECURSION_MESSAGE)
        visiting.add(name)
        for target in graph[name]:
            visit(target)
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = _def_name(node["$ref"])
        if name not in defs:
            raise SchemaRejected(f"$ref {node['$ref']!r} cannot be resolved: no definition named {name!r} in $defs.")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        resolved = _inline(copy.deepcopy(defs[name]), defs)
        if not isinstance(resolved, dict):
            raise SchemaRejected(f"$defs entry {name!r} must be a schema object")
        return {**resolved, **_inline(siblings, defs)}
    return {key: _inline(value, defs) for key, value in node.items()}
