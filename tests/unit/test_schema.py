"""Preparing a user's JSON Schema for structured output: inline local $defs, reject the rest."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

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
    pytest.param({"type": "object", "$defs": ["A"]}, "$defs must be an object", id="defs-not-a-mapping"),
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
