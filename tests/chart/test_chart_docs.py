"""values.yaml, values.schema.json and README.md tell the same story, and every value is explained."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

import values_doc

pytestmark = pytest.mark.chart

VALUES_TEXT = values_doc.VALUES.read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads(values_doc.SCHEMA.read_text())
ROWS = values_doc.rows(VALUES, SCHEMA, values_doc.comments(VALUES_TEXT))
# Keys Helm itself may pass in (from a parent chart); allowed by the schema, not set here.
HELM_PROVIDED = {"global"}


def _paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of values.yaml, parents included, by dotted path."""
    found: list[str] = []
    for key, value in node.items():
        found.append(f"{prefix}{key}")
        if isinstance(value, dict):
            found += _paths(value, f"{prefix}{key}.")
    return found


def test_every_documented_value_has_a_comment() -> None:
    missing = [row.key for row in ROWS if not row.description]
    assert not missing, f"values.yaml keys without a `# --` comment: {missing}"


def test_every_section_has_a_comment() -> None:
    descriptions = values_doc.comments(VALUES_TEXT)
    sections = {row.key.rsplit(".", 1)[0] for row in ROWS if "." in row.key}
    parents = {".".join(section.split(".")[: i + 1]) for section in sections for i in range(section.count(".") + 1)}
    missing = sorted(parents - descriptions.keys())
    assert not missing, f"values.yaml sections without a `# --` comment: {missing}"


def test_readme_table_lists_every_value() -> None:
    readme = values_doc.README.read_text()
    table = values_doc.readme_table(readme)
    missing = [row.key for row in ROWS if f"| `{row.key}` |" not in table]
    assert not missing, f"values missing from the README table (run tests/chart/values_doc.py --write): {missing}"
    assert table == values_doc.generate(), "README table is stale: run `python tests/chart/values_doc.py --write`"


def test_schema_describes_every_value_and_nothing_else() -> None:
    def schema_at(path: str) -> dict[str, Any] | None:
        node: dict[str, Any] = SCHEMA
        for key in path.split("."):
            properties = node.get("properties")
            if properties is None:
                return node  # inside a free-form object: covered by its schema
            if key not in properties:
                return None
            node = properties[key]
        return node

    uncovered = [path for path in _paths(VALUES) if schema_at(path) is None]
    assert not uncovered, f"values.yaml keys missing from values.schema.json: {uncovered}"

    def stale(schema: dict[str, Any], values: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, child in schema.get("properties", {}).items():
            if not prefix and key in HELM_PROVIDED:
                continue
            if key not in values:
                found.append(f"{prefix}{key}")
            elif "properties" in child and isinstance(values[key], dict):
                found += stale(child, values[key], f"{prefix}{key}.")
        return found

    assert not stale(SCHEMA, VALUES), "values.schema.json describes keys values.yaml does not set"


def test_schema_closes_every_structured_object() -> None:
    def open_objects(schema: dict[str, Any], path: str) -> list[str]:
        found = []
        if "properties" in schema and schema.get("additionalProperties") is not False:
            found.append(path or "<root>")
        for key, child in schema.get("properties", {}).items():
            found += open_objects(child, f"{path}.{key}".lstrip("."))
        return found

    assert not open_objects(SCHEMA, ""), "objects with properties must set additionalProperties: false"


def test_schema_matches_the_defaults_it_documents() -> None:
    import jsonschema

    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def test_readme_explains_install_upgrade_uninstall_rbac_and_argo_health() -> None:
    readme = values_doc.README.read_text()
    for heading in ("## Install", "## The CRD", "## Upgrade", "## Uninstall", "## RBAC", "## Argo CD"):
        assert heading in readme
    assert "helm.sh/resource-policy: keep" in readme
    assert "resource.customizations.health.agentrun.dev_AgentRun" in readme
    lua = readme.split("resource.customizations.health.agentrun.dev_AgentRun: |", 1)[1].split("```", 1)[0]
    for phrase in ('"Succeeded"', '"Healthy"', '"Failed"', '"Cancelled"', '"Degraded"', '"Progressing"', "return hs"):
        assert phrase in lua


def test_notes_show_a_first_run_and_how_to_follow_it() -> None:
    notes = (values_doc.CHART / "templates" / "NOTES.txt").read_text()
    assert "type: model.echo" in notes
    assert "kubectl agentrun events hello -n {{ $ns }} --follow" in notes
    assert "kubectl wait --for=condition=Succeeded ar/hello" in notes


def test_notes_state_what_the_admission_policy_guarantees() -> None:
    notes = (values_doc.CHART / "templates" / "NOTES.txt").read_text()
    enabled, disabled = notes.split("{{- if .Values.admissionPolicy.enabled }}", 1)[1].split("{{- else }}", 1)
    assert "A run may reference only Secrets that its creator may get" in enabled
    assert "admissionPolicy.enabled is false" in disabled
    assert "read any Secret there" in disabled.split("{{- end }}", 1)[0]
