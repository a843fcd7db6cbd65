"""Preparing a user's JSON Schema for structured output: inline local $defs, reject the rest.

The schema is untrusted: every limit, every refused reference and every invalid
document is a table of cases below, and so is validating outputs with user patterns.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import jsonschema
import pytest
import referencing.exceptions

from agentrun.layers import schema

RECURSION = "Recursive $defs refs are not supported for structured output exposure."


def test_local_refs_are_inlined_and_defs_removed() -> None:
    prepared = schema.prepare_output_schema(
        {
            "type": "object",
            "properties": {
                "owner": {"$ref": "#/$defs/Person"},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            },
            "required": ["owner"],
            "$defs": {
                "Person": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "team": {"$ref": "#/$defs/Team"}},
                },
                "Team": {"type": "string", "enum": ["sre", "dev"]},
                "Tag": {"type": "string", "maxLength": 10},
            },
        }
    )
    assert prepared == {
        "type": "object",
        "properties": {
            "owner": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "team": {"type": "string", "enum": ["sre", "dev"]}},
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}},
        },
        "required": ["owner"],
    }
    assert "$ref" not in repr(prepared)


def test_sibling_keywords_of_a_ref_are_kept_and_win() -> None:
    prepared = schema.prepare_output_schema(
        {
            "type": "object",
            "properties": {"level": {"$ref": "#/$defs/Level", "description": "How bad it is.", "default": 1}},
            "$defs": {"Level": {"type": "integer", "minimum": 0, "description": "generic"}},
        }
    )
    assert prepared["properties"]["level"] == {
        "type": "integer",
        "minimum": 0,
        "description": "How bad it is.",
        "default": 1,
    }


def test_shared_definition_is_copied_not_aliased() -> None:
    prepared = schema.prepare_output_schema(
        {
            "properties": {"a": {"$ref": "#/$defs/S"}, "b": {"$ref": "#/$defs/S"}},
            "$defs": {"S": {"type": "object", "properties": {"x": {"type": "string"}}}},
        }
    )
    prepared["properties"]["a"]["properties"]["x"]["type"] = "integer"
    assert prepared["properties"]["b"]["properties"]["x"] == {"type": "string"}


def test_missing_type_defaults_to_object_and_input_is_not_mutated() -> None:
    original = {"properties": {"n": {"$ref": "#/$defs/N"}}, "$defs": {"N": {"type": "integer"}}}
    before = repr(original)
    prepared = schema.prepare_output_schema(original)
    assert prepared == {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert repr(original) == before


def test_prepared_schema_validates_like_the_original() -> None:
    original = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"],
        "$defs": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
    }
    prepared = schema.prepare_output_schema(original)
    for instance in ({"items": [{"id": 1}]}, {"items": [{"id": "x"}]}, {"items": [{}]}, {}):
        assert jsonschema.Draft202012Validator(prepared).is_valid(instance) == jsonschema.Draft202012Validator(
            original
        ).is_valid(instance), instance


RECURSIVE = [
    pytest.param(
        {
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                }
            },
        },
        id="direct",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/A"}},
            "$defs": {
                "A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
                "B": {"type": "object", "properties": {"c": {"$ref": "#/$defs/C"}}},
                "C": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/A"}]},
            },
        },
        id="indirect-through-anyOf",
    ),
    pytest.param(
        {"type": "object", "$defs": {"Unused": {"$ref": "#/$defs/Unused"}}},
        id="unused-self-reference",
    ),
]


@pytest.mark.parametrize("output_schema", RECURSIVE)
def test_recursive_defs_are_rejected_with_the_exact_message(output_schema: dict[str, Any]) -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(output_schema)
    assert str(rejected.value) == RECURSION


def test_diamond_references_are_not_recursion() -> None:
    prepared = schema.prepare_output_schema(
        {
            "properties": {"l": {"$ref": "#/$defs/L"}, "r": {"$ref": "#/$defs/R"}},
            "$defs": {
                "L": {"type": "object", "properties": {"leaf": {"$ref": "#/$defs/Leaf"}}},
                "R": {"type": "object", "properties": {"leaf": {"$ref": "#/$defs/Leaf"}}},
                "Leaf": {"type": "boolean"},
            },
        }
    )
    assert prepared["properties"]["l"]["properties"]["leaf"] == {"type": "boolean"}
    assert prepared["properties"]["r"]["properties"]["leaf"] == {"type": "boolean"}


REJECTED_REFS = [
    pytest.param("http://example.com/schema.json", "Remote $ref", id="remote-http"),
    pytest.param("https://example.com/s#/$defs/X", "Remote $ref", id="remote-https-with-fragment"),
    pytest.param("other.json#/$defs/X", "Remote $ref", id="relative-document"),
    pytest.param("#/properties/x", "points outside '#/$defs/'", id="elsewhere-in-document"),
    pytest.param("#", "points outside '#/$defs/'", id="document-root"),
    pytest.param("#/definitions/X", "points outside '#/$defs/'", id="draft7-definitions"),
    pytest.param("#/$defs/", "must name one definition", id="empty-name"),
    pytest.param("#/$defs/X/properties/y", "must name one definition", id="nested-pointer"),
]


@pytest.mark.parametrize(("ref", "expected"), REJECTED_REFS)
def test_refs_outside_own_defs_are_rejected(ref: str, expected: str) -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(
            {"type": "object", "properties": {"x": {"$ref": ref}}, "$defs": {"X": {"type": "string"}}}
        )
    assert expected in str(rejected.value)
    assert repr(ref) in str(rejected.value)


@pytest.mark.parametrize(
    "location",
    [
        pytest.param("body", id="in-body"),
        pytest.param("definition", id="inside-a-definition"),
    ],
)
def test_remote_refs_are_rejected_wherever_they_are(location: str) -> None:
    remote = {"$ref": "http://evil.example/x.json"}
    if location == "body":
        output_schema = {"type": "object", "properties": {"x": remote}}
    else:
        output_schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/D"}}, "$defs": {"D": remote}}
    with pytest.raises(schema.SchemaRejected, match="Remote"):
        schema.prepare_output_schema(output_schema)


def test_unresolvable_ref_names_the_ref_and_the_missing_definition() -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(
            {"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}, "$defs": {"Other": {"type": "string"}}}
        )
    message = str(rejected.value)
    assert "'#/$defs/Missing'" in message
    assert "no definition named 'Missing'" in message


def test_unresolvable_ref_inside_a_definition_is_named() -> None:
    with pytest.raises(schema.SchemaRejected, match="Ghost"):
        schema.prepare_output_schema(
            {"properties": {"x": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"items": {"$ref": "#/$defs/Ghost"}}}}
        )


NOT_OBJECT_SCHEMAS = [
    pytest.param({"type": "array", "items": {"type": "string"}}, "type: object", id="type-array"),
    pytest.param({"type": "string"}, "type: object", id="type-string"),
    pytest.param([{"type": "object"}], "must be a JSON object, got list", id="a-list"),
    pytest.param("object", "must be a JSON object, got str", id="a-string"),
    pytest.param(None, "must be a JSON object, got NoneType", id="null"),
    pytest.param({"type": "object", "$defs": ["A"]}, "$defs: ['A'] is not of type 'object'", id="defs-not-a-mapping"),
]


@pytest.mark.parametrize(("output_schema", "expected"), NOT_OBJECT_SCHEMAS)
def test_non_object_schemas_are_rejected(output_schema: Any, expected: str) -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(output_schema)
    assert expected in str(rejected.value)


def test_non_string_ref_is_rejected() -> None:
    with pytest.raises(schema.SchemaRejected, match=r"\$ref must be a string"):
        schema.prepare_output_schema({"type": "object", "properties": {"x": {"$ref": 42}}})


def test_root_ref_to_a_non_object_definition_is_rejected() -> None:
    output_schema = {"$ref": "#/$defs/List", "$defs": {"List": {"type": "array", "items": {"type": "string"}}}}
    with pytest.raises(schema.SchemaRejected, match="type: object"):
        schema.prepare_output_schema(output_schema)


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _nested(levels: int) -> dict[str, Any]:
    """An object schema nesting ``levels`` objects (two JSON levels each: properties, then the name)."""
    inner: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        inner = _object(child=inner)
    return inner


def _exponential_defs(levels: int, fan_out: int) -> dict[str, Any]:
    """Small as written; ``fan_out ** levels`` leaves once inlined."""
    defs: dict[str, Any] = {
        f"L{level}": _object(**{f"p{i}": {"$ref": f"#/$defs/L{level + 1}"} for i in range(fan_out)})
        for level in range(levels)
    }
    defs[f"L{levels}"] = {"type": "string"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/L0"}}, "$defs": defs}


def _def_chain(length: int) -> dict[str, Any]:
    """Definitions that each wrap the next: shallow as written, deep once inlined."""
    defs: dict[str, Any] = {f"D{i}": _object(next={"$ref": f"#/$defs/D{i + 1}"}) for i in range(length)}
    defs[f"D{length}"] = {"type": "string"}
    return {"type": "object", "properties": {"first": {"$ref": "#/$defs/D0"}}, "$defs": defs}


LIMITS = [
    pytest.param(_exponential_defs(6, 8), f"limit of {schema.MAX_SCHEMA_NODES} values", id="exponential-defs"),
    pytest.param(_exponential_defs(60, 2), "limit of", id="exponential-defs-2-to-the-60"),
    pytest.param(_def_chain(20), f"limit of {schema.MAX_SCHEMA_DEPTH} levels", id="def-chain-too-deep-once-inlined"),
    pytest.param(_nested(20), f"limit of {schema.MAX_SCHEMA_DEPTH} levels", id="too-deep-as-written"),
    pytest.param(_nested(5000), f"limit of {schema.MAX_SCHEMA_DEPTH} levels", id="deeper-than-the-interpreter-stack"),
    pytest.param(
        _object(level={"enum": list(range(schema.MAX_SCHEMA_NODES))}),
        f"limit of {schema.MAX_SCHEMA_NODES} values",
        id="too-many-values-as-written",
    ),
    pytest.param(
        _object(note={"type": "string", "description": "x" * (schema.MAX_SCHEMA_TEXT + 1)}),
        f"limit of {schema.MAX_SCHEMA_TEXT} characters",
        id="too-much-text",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {f"p{i}": {"$ref": "#/$defs/Long"} for i in range(40)},
            "$defs": {"Long": {"type": "string", "description": "y" * (schema.MAX_SCHEMA_TEXT // 20)}},
        },
        f"limit of {schema.MAX_SCHEMA_TEXT} characters",
        id="too-much-text-once-inlined",
    ),
    pytest.param(
        _object(**{f"p{i}": {"type": "string", "pattern": f"^x{i}$"} for i in range(schema.MAX_SCHEMA_PATTERNS + 1)}),
        f"limit of {schema.MAX_SCHEMA_PATTERNS}",
        id="too-many-patterns",
    ),
]


@pytest.mark.parametrize(("output_schema", "limit"), LIMITS)
def test_schemas_beyond_a_limit_are_rejected_quickly_naming_the_limit(
    output_schema: dict[str, Any], limit: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(output_schema)
    assert limit in str(rejected.value)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    "output_schema",
    [
        pytest.param(_nested(15), id="deep-but-within-the-depth-limit"),
        pytest.param(_exponential_defs(3, 8), id="shared-defs-within-the-size-limit"),
        pytest.param(_def_chain(14), id="def-chain-within-the-depth-limit"),
    ],
)
def test_schemas_within_the_limits_are_prepared(output_schema: dict[str, Any]) -> None:
    prepared = schema.prepare_output_schema(output_schema)
    assert "$ref" not in repr(prepared)


INVALID_SCHEMAS = [
    pytest.param(_object(x={"type": "strin"}), "properties/x/type: 'strin' is not valid", id="unknown-type"),
    pytest.param({"type": "object", "properties": 5}, "properties: 5 is not of type 'object'", id="properties-not-map"),
    pytest.param(_object(x={"type": "string", "minLength": -1}), "-1 is less than the minimum of 0", id="negative"),
    pytest.param({"type": "object", "required": "x"}, "required: 'x' is not of type 'array'", id="required-string"),
    pytest.param(_object(x={"type": "array", "items": [{}]}), "properties/x/items: [{}] is not", id="items-array"),
    pytest.param(_object(x={"additionalProperties": "no"}), "'no' is not of type", id="additional-not-schema"),
    pytest.param(_object(x={"type": "string", "pattern": "("}), "missing ): (", id="pattern-unbalanced"),
    pytest.param(_object(x={"type": "string", "pattern": "[a-"}), "pattern '[a-' cannot be used", id="pattern-range"),
    pytest.param(
        _object(x={"type": "string", "pattern": r"(a)\1"}), r"invalid escape sequence: \1", id="backreference"
    ),
    pytest.param(
        _object(x={"type": "string", "pattern": "^(?!admin)"}), "invalid perl operator: (?!", id="negative-lookahead"
    ),
    pytest.param(_object(x={"type": "string", "pattern": "(?<=a)b"}), "invalid perl operator: (?<", id="lookbehind"),
    pytest.param(
        {"type": "object", "patternProperties": {r"(?P<n>x)(?P=n)": {}}},
        "pattern '(?P<n>x)(?P=n)' cannot be used",
        id="pattern-property-named-backreference",
    ),
    pytest.param(
        _object(x={"type": "string", "pattern": "(x{1000}){1000}"}),
        "invalid repetition size: {1000}",
        id="pattern-too-big",
    ),
    pytest.param(
        _object(x={"type": "string", "pattern": r"^[\pL ]{1,200}$"}),
        f"at most {schema.regex.MAX_MEMORY_BYTES // 1024} KiB once compiled",
        id="pattern-beyond-the-memory-limit",
    ),
    pytest.param(
        {"type": "object", "$defs": {"Bad": {"type": 7}}, "properties": {}}, "$defs/Bad/type: 7", id="invalid-def"
    ),
]


@pytest.mark.parametrize(("output_schema", "message"), INVALID_SCHEMAS)
def test_invalid_json_schemas_are_rejected_with_the_validators_message(
    output_schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(output_schema)
    assert str(rejected.value).startswith("output jsonSchema is not a valid JSON Schema at ")
    assert message in str(rejected.value)


REFUSED_REFERENCES = [
    pytest.param(_object(x={"$dynamicRef": "#meta"}), "$dynamicRef '#meta' is not supported", id="dynamic-local"),
    pytest.param(_object(x={"$dynamicRef": "https://evil.example/s.json#meta"}), "$dynamicRef", id="dynamic-remote"),
    pytest.param(_object(x={"$recursiveRef": "#"}), "$recursiveRef '#' is not supported", id="recursive-ref"),
    pytest.param(_object(x={"$ref": "#node"}), "points outside '#/$defs/'", id="anchor-ref"),
    pytest.param(_object(x={"$ref": "urn:example:thing"}), "Remote $ref 'urn:example:thing'", id="urn"),
    pytest.param(_object(x={"$ref": "//evil.example/s.json"}), "Remote $ref", id="network-path"),
    pytest.param(_object(x={"$ref": "#/$defs/a~1b"}), "must name one definition", id="pointer-escape"),
    pytest.param(_object(x={"$ref": "#/$defs/a%2Fb"}), "must name one definition", id="percent-encoded"),
    pytest.param(
        _object(x={"$id": "https://evil.example/", "properties": {"y": {"$ref": "#/$defs/X"}}}),
        "$id 'https://evil.example/' is only allowed at the root",
        id="nested-id-moves-the-base",
    ),
    pytest.param(
        _object(x={"$schema": "https://evil.example/meta"}),
        "$schema 'https://evil.example/meta' is only allowed",
        id="nested-schema",
    ),
    pytest.param(
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        "output schemas are JSON Schema 2020-12",
        id="other-dialect",
    ),
    pytest.param(
        {"$schema": "https://evil.example/meta", "type": "object"}, "is not supported", id="remote-metaschema"
    ),
    pytest.param(
        {"type": "object", "dependentSchemas": {"a": {"$ref": "https://evil.example/x"}}},
        "Remote $ref",
        id="in-dependentSchemas",
    ),
    pytest.param(
        _object(x={"type": "array", "prefixItems": [{"$ref": "https://evil.example/x"}]}),
        "Remote $ref",
        id="in-prefixItems",
    ),
    pytest.param(_object(x={"if": {"$ref": "https://evil.example/x"}, "then": {}}), "Remote $ref", id="in-if"),
    pytest.param(
        {"type": "object", "not": {"$dynamicRef": "https://evil.example/x"}}, "$dynamicRef", id="dynamic-in-not"
    ),
    pytest.param(
        {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False},
        "cannot combine unevaluatedProperties with patternProperties",
        id="unevaluated-with-pattern-properties",
    ),
]


@pytest.mark.parametrize(("output_schema", "message"), REFUSED_REFERENCES)
def test_references_that_leave_the_document_are_refused(output_schema: dict[str, Any], message: str) -> None:
    with pytest.raises(schema.SchemaRejected) as rejected:
        schema.prepare_output_schema(output_schema)
    assert message in str(rejected.value)


@pytest.mark.parametrize(
    ("output_schema", "kept"),
    [
        pytest.param(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://example.com/out", **_object()},
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://example.com/out"},
            id="root-dialect-and-id",
        ),
        pytest.param(
            _object(**{"$ref": {"type": "string"}, "$id": {"type": "integer"}}),
            {"properties": {"$ref": {"type": "string"}, "$id": {"type": "integer"}}},
            id="properties-named-like-keywords",
        ),
        pytest.param(
            _object(x={"const": {"$ref": "https://evil.example/x"}, "default": {"$ref": "#/$defs/X"}}),
            {"properties": {"x": {"const": {"$ref": "https://evil.example/x"}, "default": {"$ref": "#/$defs/X"}}}},
            id="refs-in-data-are-data",
        ),
    ],
)
def test_keyword_lookalikes_in_data_and_names_are_left_alone(
    output_schema: dict[str, Any], kept: dict[str, Any]
) -> None:
    prepared = schema.prepare_output_schema(output_schema)
    assert prepared == {**output_schema, **kept}


@pytest.mark.parametrize(
    "output_schema",
    [
        pytest.param({"$ref": "https://schemas.example/thing.json"}, id="remote-ref"),
        pytest.param({"$dynamicRef": "https://schemas.example/thing.json#meta"}, id="remote-dynamic-ref"),
        pytest.param(
            {"$id": "https://schemas.example/base/", "properties": {"x": {"$ref": "other.json"}}}, id="relative-to-id"
        ),
    ],
)
def test_the_output_validator_never_retrieves_anything(
    monkeypatch: pytest.MonkeyPatch, output_schema: dict[str, Any]
) -> None:
    fetched: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: fetched.append(args))
    validator = schema.output_validator(output_schema)
    with pytest.raises(referencing.exceptions.Unresolvable):
        validator.validate({"x": 1})
    assert fetched == []


HOSTILE = "a" * 50_000 + "!"


@pytest.mark.parametrize(
    ("output_schema", "instance", "valid"),
    [
        pytest.param(_object(x={"type": "string", "pattern": "^(a+)+$"}), {"x": HOSTILE}, False, id="pattern"),
        pytest.param(_object(x={"type": "string", "pattern": "^(a|aa)+$"}), {"x": "a" * 50_000}, True, id="alt"),
        pytest.param(
            {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}},
            {HOSTILE: "not checked", "aaa": 1},
            True,
            id="patternProperties",
        ),
        pytest.param(
            {"type": "object", "patternProperties": {"^(a+)+$": {}}, "additionalProperties": False},
            {HOSTILE: 1},
            False,
            id="additionalProperties-with-patterns",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"pattern": "^(a+)+$"}}, {HOSTILE: 1}, False, id="propertyNames"
        ),
    ],
)
def test_user_patterns_are_matched_in_linear_time(
    output_schema: dict[str, Any], instance: dict[str, Any], valid: bool
) -> None:
    validator = schema.output_validator(schema.prepare_output_schema(output_schema))
    started = time.perf_counter()
    assert validator.is_valid(instance) is valid
    assert time.perf_counter() - started < 1


AGREEMENT = [
    pytest.param(_object(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}), id="pattern"),
    pytest.param(
        {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False},
        id="patternProperties-closed",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {"id": {"type": "integer"}},
            "patternProperties": {"^tag_": {"type": "string"}},
            "additionalProperties": {"type": "boolean"},
        },
        id="additionalProperties-schema",
    ),
    pytest.param({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}, id="propertyNames"),
]
INSTANCES = [
    {"code": "ABC-12"},
    {"code": "abc-12"},
    {"code": 5},
    {"x-a": 1, "x-b": "no"},
    {"x-a": 1, "other": 2},
    {"id": 1, "tag_a": "t", "flag": True},
    {"id": 1, "tag_a": 3, "flag": "yes"},
    {"Upper": 1},
    {"lower": 1},
    {},
]


@pytest.mark.parametrize("output_schema", AGREEMENT)
def test_output_validator_agrees_with_the_reference_validator(output_schema: dict[str, Any]) -> None:
    ours = schema.output_validator(schema.prepare_output_schema(output_schema))
    reference = jsonschema.Draft202012Validator(output_schema)
    for instance in INSTANCES:
        assert ours.is_valid(instance) == reference.is_valid(instance), instance
        assert failures(ours, instance) == failures(reference, instance), instance


def failures(validator: Any, instance: Any) -> list[tuple[str, list[Any]]]:
    """Which keyword failed where: the messages of our own keywords may be worded differently."""
    return sorted((error.validator, list(error.absolute_path)) for error in validator.iter_errors(instance))
