"""A user's JSON Schema for structured output: prepared once, then used to validate outputs.

The schema is untrusted input, and preparing it is where untrusted input meets CPU and
memory, so every step is bounded before it runs:

1. the document's size, nesting and number of regular expressions are bounded;
2. references stay inside the document: ``$ref`` may only name an entry of the schema's
   own ``$defs`` (``#/$defs/Name``); any other reference keyword, and anything that would
   move the base URI (a nested ``$id`` or ``$schema``), is refused;
3. the schema must be a valid JSON Schema 2020-12 document, checked against the
   metaschema with every pattern compiled by RE2 (see :mod:`agentrun.layers.regex`);
4. ``$defs`` references are inlined, within a limit on the inlined size, so a model is
   shown one self-contained schema, and recursive definitions are rejected.

Outputs are then validated by :func:`output_validator`: patterns are matched by RE2 and
the validator can never retrieve a document from anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema.protocols
import referencing

from agentrun.layers import regex

RECURSION_MESSAGE = "Recursive $defs refs are not supported for structured output exposure."
LOCAL_PREFIX = "#/$defs/"
DIALECTS = frozenset({"https://json-schema.org/draft/2020-12/schema", "https://json-schema.org/draft/2020-12/schema#"})

MAX_SCHEMA_DEPTH = 32
"""Deepest nesting of objects and arrays in the schema, as written and once inlined."""
MAX_SCHEMA_NODES = 10_000
"""Most JSON values (objects, arrays, scalars) in the schema, as written and once inlined."""
MAX_SCHEMA_TEXT = 256 * 1024
"""Most characters of keys and strings in the schema, as written and once inlined."""
MAX_SCHEMA_PATTERNS = 256
"""Most distinct regular expressions (``pattern`` values, ``patternProperties`` keys)."""

# Where JSON Schema 2020-12 holds subschemas; every other keyword's value is data
# (``const``, ``enum``, ``default``, ``examples``) or an annotation.
SCHEMA_VALUED = frozenset(
    {
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SCHEMA_MAPS = frozenset({"$defs", "dependentSchemas", "patternProperties", "properties"})
DYNAMIC_REFERENCES = ("$dynamicRef", "$recursiveRef")


class SchemaRejected(ValueError):
    """The output schema cannot be used; the message is shown to the user as is."""


def prepare_output_schema(schema: Any) -> dict[str, Any]:
    """Return ``schema`` checked, with every ``$defs`` reference inlined and ``$defs`` removed.

    Raises :class:`SchemaRejected`, with a message for the user, for anything else: a schema
    that is not an object schema, exceeds a limit, is not valid JSON Schema, references
    anything outside its own ``$defs`` or has recursive definitions.
    """
    if not isinstance(schema, dict):
        raise SchemaRejected(f"output jsonSchema must be a JSON object, got {type(schema).__name__}")
    _Budget("as written").measure(schema)
    _check_references(schema)
    _check_against_metaschema(schema)
    _require_object(schema)
    defs = schema.get("$defs", {})
    _reject_recursion(defs)
    body = {key: value for key, value in schema.items() if key != "$defs"}
    inlined = _Inliner(defs).schema(body, 0)
    assert isinstance(inlined, dict)
    _require_object(inlined)  # a root $ref may have brought in another type
    inlined.setdefault("type", "object")
    return inlined


def output_validator(prepared: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for outputs against a prepared schema: RE2 patterns, no retrieval, ever."""
    # mypy's attrs support does not see the `retrieve` alias of Registry's private field.
    registry: referencing.Registry[Any] = referencing.Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]
    return _OutputValidator(prepared, registry=registry)


# --- bounds -------------------------------------------------------------------------


class _Budget:
    """Counts values and text against the limits; ``where`` says which form of the schema."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.nodes = 0
        self.text = 0

    def spend(self, value: Any, depth: int) -> None:
        """Account for one JSON value at ``depth`` (its contents are accounted separately)."""
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaRejected(
                f"output jsonSchema ({self.where}) nests deeper than the limit of {MAX_SCHEMA_DEPTH} levels"
            )
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise SchemaRejected(
                f"output jsonSchema ({self.where}) has more than the limit of {MAX_SCHEMA_NODES} values"
            )
        if isinstance(value, str):
            self.spend_text(value)

    def spend_text(self, text: str) -> None:
        self.text += len(text)
        if self.text > MAX_SCHEMA_TEXT:
            raise SchemaRejected(
                f"output jsonSchema ({self.where}) has more than the limit of {MAX_SCHEMA_TEXT} characters of text"
            )

    def measure(self, document: Any) -> None:
        """Account for a whole document, without recursion, stopping at the first limit."""
        pending: list[tuple[Any, int]] = [(document, 0)]
        while pending:
            value, depth = pending.pop()
            self.spend(value, depth)
            if isinstance(value, dict):
                for key, item in value.items():
                    self.spend_text(str(key))
                    pending.append((item, depth + 1))
            elif isinstance(value, list):
                pending.extend((item, depth + 1) for item in value)


# --- references -----------------------------------------------------------------------


def _subschemas(schema: dict[str, Any]) -> Iterator[Any]:
    """The subschemas directly inside ``schema``, where 2020-12 puts them."""
    for key, value in schema.items():
        if key in SCHEMA_VALUED:
            yield value
        elif key in SCHEMA_LISTS and isinstance(value, list):
            yield from value
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            yield from value.values()


def _walk(schema: Any) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every schema object in the document, with whether it is the root."""
    pending = [(schema, True)]
    while pending:
        node, root = pending.pop()
        if isinstance(node, dict):
            yield node, root
            pending.extend((sub, False) for sub in _subschemas(node))


def _check_references(schema: dict[str, Any]) -> None:
    patterns: set[str] = set()
    uses: set[str] = set()
    for node, root in _walk(schema):
        for keyword in DYNAMIC_REFERENCES:
            if keyword in node:
                raise SchemaRejected(
                    f"{keyword} {node[keyword]!r} is not supported: only local '#/$defs/...' $refs are allowed."
                )
        if "$ref" in node:
            _def_name(node["$ref"])
        if not root:
            for keyword in ("$id", "$schema"):
                if keyword in node:
                    raise SchemaRejected(
                        f"{keyword} {node[keyword]!r} is only allowed at the root of the output jsonSchema: "
                        "an embedded schema resource would change what its refs point to."
                    )
        elif "$schema" in node and node["$schema"] not in DIALECTS:
            raise SchemaRejected(
                f"$schema {node['$schema']!r} is not supported: output schemas are JSON Schema 2020-12 "
                f"({min(DIALECTS)})."
            )
        if isinstance(node.get("pattern"), str):
            patterns.add(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            patterns.update(str(key) for key in node["patternProperties"])
        uses.update(keyword for keyword in ("patternProperties", "unevaluatedProperties") if keyword in node)
    if len(patterns) > MAX_SCHEMA_PATTERNS:
        raise SchemaRejected(
            f"output jsonSchema has {len(patterns)} distinct patterns, more than the limit of {MAX_SCHEMA_PATTERNS}"
        )
    if uses == {"patternProperties", "unevaluatedProperties"}:
        raise SchemaRejected("output jsonSchema cannot combine unevaluatedProperties with patternProperties.")


def _def_name(ref: Any) -> str:
    if not isinstance(ref, str):
        raise SchemaRejected(f"$ref must be a string, got {ref!r}")
    if not ref.startswith("#"):
        raise SchemaRejected(f"Remote $ref {ref!r} is not supported: only local '#/$defs/...' refs are allowed.")
    if not ref.startswith(LOCAL_PREFIX):
        raise SchemaRejected(f"$ref {ref!r} points outside '#/$defs/': only local '#/$defs/...' refs are allowed.")
    name = ref.removeprefix(LOCAL_PREFIX)
    if not name or "/" in name or "~" in name or "%" in name:
        raise SchemaRejected(
            f"$ref {ref!r} must name one definition directly under '#/$defs/' (without '/', '~' or '%')."
        )
    return name


def _refs(schema: Any) -> set[str]:
    """Names of the definitions that ``schema`` references, itself or in its subschemas."""
    return {_def_name(node["$ref"]) for node, _ in _walk(schema) if "$ref" in node}


def _reject_recursion(defs: dict[str, Any]) -> None:
    graph = {name: _refs(definition) for name, definition in defs.items()}
    # An iterative depth-first search: a chain of definitions as long as the limits allow
    # must not exhaust the interpreter's stack.
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        path, on_path = [start], {start}
        pending = [iter(sorted(graph[start]))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif target in on_path:
                raise SchemaRejected(RECURSION_MESSAGE)
            elif target in graph and target not in done:  # unknown names are reported when inlining
                path.append(target)
                on_path.add(target)
                pending.append(iter(sorted(graph[target])))


# --- validity -------------------------------------------------------------------------


def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        regex.Pattern(instance)
    return True


# Only the regex format is asserted when checking a schema, and it is checked by RE2:
# the pattern must be one that outputs can later be matched against.
_METASCHEMA_FORMATS = jsonschema.FormatChecker(formats=())
_METASCHEMA_FORMATS.checks("regex", raises=regex.PatternError)(_is_regex)


def _check_against_metaschema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema, format_checker=_METASCHEMA_FORMATS)
    except jsonschema.exceptions.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        detail = str(error.cause) if error.cause is not None else error.message
        raise SchemaRejected(f"output jsonSchema is not a valid JSON Schema at {where}: {detail}") from None


def _require_object(schema: dict[str, Any]) -> None:
    if schema.get("type", "object") != "object":
        raise SchemaRejected(f"output jsonSchema must describe an object (type: object), got type {schema['type']!r}")


# --- inlining -------------------------------------------------------------------------


class _Inliner:
    """Copies a schema with every ``$ref`` replaced by its definition, within the budget."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.budget = _Budget("once its $defs refs are inlined")

    def schema(self, node: Any, depth: int) -> Any:
        if not isinstance(node, dict):
            return self.data(node, depth)
        if "$ref" in node:
            return self._resolve(node, depth)
        self.budget.spend(node, depth)
        copied: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$defs":
                continue  # only the root's $defs can be referenced, and they are inlined
            self.budget.spend_text(key)
            if key in SCHEMA_VALUED:
                copied[key] = self.schema(value, depth + 1)
            elif key in SCHEMA_LISTS and isinstance(value, list):
                self.budget.spend(value, depth + 1)
                copied[key] = [self.schema(item, depth + 2) for item in value]
            elif key in SCHEMA_MAPS and isinstance(value, dict):
                self.budget.spend(value, depth + 1)
                copied[key] = {}
                for name, item in value.items():
                    self.budget.spend_text(name)
                    copied[key][name] = self.schema(item, depth + 2)
            else:
                copied[key] = self.data(value, depth + 1)
        return copied

    def _resolve(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        ref = node["$ref"]
        name = _def_name(ref)
        if name not in self.defs:
            raise SchemaRejected(f"$ref {ref!r} cannot be resolved: no definition named {name!r} in $defs.")
        resolved = self.schema(self.defs[name], depth)
        if not isinstance(resolved, dict):
            raise SchemaRejected(f"$defs entry {name!r} must be a schema object")
        siblings = self.schema({key: value for key, value in node.items() if key != "$ref"}, depth)
        return {**resolved, **siblings}

    def data(self, value: Any, depth: int) -> Any:
        """A copy of a value that is not a schema (``const``, ``enum``, annotations)."""
        self.budget.spend(value, depth)
        if isinstance(value, dict):
            copied: dict[str, Any] = {}
            for key, item in value.items():
                self.budget.spend_text(key)
                copied[key] = self.data(item, depth + 1)
            return copied
        if isinstance(value, list):
            return [self.data(item, depth + 1) for item in value]
        return value


# --- output validation ----------------------------------------------------------------


def _never_retrieve(uri: str) -> referencing.Resource[Any]:
    raise LookupError(f"{uri!r}: the operator never retrieves schemas; refs must stay inside the output schema")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not regex.Pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = regex.Pattern(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    patterns = [regex.Pattern(pattern) for pattern in schema.get("patternProperties", {})]
    extras = [key for key in instance if key not in named and not any(pattern.search(key) for pattern in patterns)]
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        listed = ", ".join(repr(key) for key in sorted(extras))
        if patterns:
            sources = ", ".join(repr(pattern.source) for pattern in patterns)
            yield jsonschema.ValidationError(f"{listed} not allowed: matched by no property and none of {sources}")
        else:
            yield jsonschema.ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


# Keyword callables receive the concrete validator class jsonschema builds, hence `validator: Any`.
_OutputValidator: type[jsonschema.protocols.Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
"""Draft 2020-12 validation with every user pattern matched by RE2.

``unevaluatedProperties`` would match ``patternProperties`` with Python's ``re``; the two
are refused together when the schema is prepared. ``format`` is not asserted.
"""
