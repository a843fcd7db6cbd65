"""The CRDs generated from the models: committed copies, descriptions, names and columns.

Named apart from tests/integration/test_crd.py: test modules share one namespace.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agentrun.api import crd, models, schema_hints

REPO = pathlib.Path(__file__).resolve().parents[2]
UNDESCRIBED_TOP_LEVEL = {"metadata"}  # the API server's own ObjectMeta, never ours to document


KINDS = {kind.plural: kind for kind in crd.kinds()}
AGENT_RUN = KINDS["agentruns"]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return crd.custom_resource_definition(AGENT_RUN)


@pytest.fixture(scope="module")
def version(manifest: dict[str, Any]) -> dict[str, Any]:
    [served] = manifest["spec"]["versions"]
    return served


def served_version(kind: crd.Kind) -> dict[str, Any]:
    [served] = crd.custom_resource_definition(kind)["spec"]["versions"]
    return dict(served)


@pytest.mark.parametrize("kind", crd.kinds(), ids=lambda kind: kind.plural)
def test_committed_crds_match_the_models(kind: crd.Kind) -> None:
    committed = (REPO / kind.file).read_text()
    assert committed == crd.render(kind), f"{kind.file} is out of date with api/models.py: run 'make crds'"


def test_no_stray_crd_files() -> None:
    assert sorted(path.name for path in (REPO / crd.CRD_DIR).glob("*.yaml")) == sorted(
        pathlib.Path(kind.file).name for kind in crd.kinds()
    )


@pytest.mark.parametrize("kind", crd.kinds(), ids=lambda kind: kind.plural)
def test_rendered_crd_is_yaml_of_the_manifest(kind: crd.Kind) -> None:
    rendered = crd.render(kind)
    assert rendered.startswith(crd.GENERATED_HEADER)
    assert yaml.safe_load(rendered) == crd.custom_resource_definition(kind)


def _forbidden_keys(node: dict[str, Any]) -> set[str]:
    """Keys an open object declares only so that CEL can reject them."""
    rules = node.get(schema_hints.VALIDATIONS, [])
    return {match[1] for rule in rules if (match := re.fullmatch(r"!has\(self\.(\w+)\)", rule["rule"]))}


def _properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every property node below ``node``: (path, node, may go undescribed)."""
    forbidden = _forbidden_keys(node)
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}"
        yield child_path, child, key in forbidden
        yield from _properties(child, child_path)
    if "items" in node:
        yield from _properties(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", crd.kinds(), ids=lambda kind: kind.plural)
def test_every_property_is_described(kind: crd.Kind) -> None:
    root = served_version(kind)["schema"]["openAPIV3Schema"]
    assert root.get("description")
    missing = [
        path
        for path, node, exempt in _properties(root, "")
        if not exempt and path.lstrip(".") not in UNDESCRIBED_TOP_LEVEL and not str(node.get("description", "")).strip()
    ]
    assert missing == [], f"properties without a description (add one in api/models.py): {missing}"


def test_walk_sees_the_deep_and_the_exempt_nodes(version: dict[str, Any]) -> None:
    paths = {path: exempt for path, _, exempt in _properties(version["schema"]["openAPIV3Schema"], "")}
    assert paths[".spec.composition.layers[].config.apiKey"] is True
    assert paths[".status.events[].data"] is False
    assert paths[".spec.sessionSnapshot.layers[].runtimeState"] is False
    assert len(paths) > 50


@pytest.mark.parametrize("kind", crd.kinds(), ids=lambda kind: kind.plural)
def test_every_node_is_structural(kind: crd.Kind) -> None:
    version = served_version(kind)

    def nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from nodes(child, f"{path}.{key}")
        if "items" in node:
            yield from nodes(node["items"], f"{path}[]")

    for path, node in nodes(version["schema"]["openAPIV3Schema"], ""):
        assert "type" in node or node.get(schema_hints.PRESERVE_UNKNOWN), f"{path} has no type"
        assert not {"$ref", "anyOf", "title", "$defs"} & set(node), f"{path} is not structural: {sorted(node)}"


def test_inline_api_keys_are_rejected_by_cel(version: dict[str, Any]) -> None:
    config = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["composition"]["properties"][
        "layers"
    ]["items"]["properties"]["config"]
    assert config[schema_hints.PRESERVE_UNKNOWN] is True
    assert _forbidden_keys(config) == {"apiKey", "api_key"}


def test_names_short_name_and_category(manifest: dict[str, Any]) -> None:
    assert manifest["metadata"]["name"] == "agentruns.agentrun.dev"
    assert manifest["spec"]["scope"] == "Namespaced"
    names = manifest["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("AgentRun", "agentruns", "agentrun")
    assert names["shortNames"] == ["ar"]
    assert names["categories"] == [models.CATEGORY]


def test_one_category_lists_every_kind_and_collides_with_no_name() -> None:
    taken = set()
    for kind in crd.kinds():
        names = crd.custom_resource_definition(kind)["spec"]["names"]
        assert names["categories"] == [models.CATEGORY]
        taken |= {names["plural"], names["singular"], *names.get("shortNames", [])}
    assert models.CATEGORY not in taken
    assert "agents" in taken  # the Agent kind's plural, not a category


def test_status_subresource_and_single_storage_version(version: dict[str, Any]) -> None:
    assert version["name"] == "v1alpha1"
    assert (version["served"], version["storage"]) == (True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_include_phase_reason_and_age(version: dict[str, Any]) -> None:
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert {"Phase", "Reason", "Age"} <= set(columns)
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Reason"]["jsonPath"] == ".status.reason"
    assert (columns["Age"]["type"], columns["Age"]["jsonPath"]) == ("date", ".metadata.creationTimestamp")
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


def test_spec_defaults_and_required(version: dict[str, Any]) -> None:
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "required" not in spec  # composition, or agentRef: a CEL rule says which
    assert "has(self.composition) || has(self.agentRef)" in [rule["rule"] for rule in spec[schema_hints.VALIDATIONS]]
    assert "default" not in spec["properties"]["runner"]  # an Agent's default may apply
    assert "default" not in spec["properties"]["runner"]["properties"]["mode"]  # the operator's default mode applies
    assert spec["properties"]["sessionExit"]["enum"] == ["suspend", "close"]
    assert spec["properties"]["sessionSnapshot"]["nullable"] is True
    layers = spec["properties"]["composition"]["properties"]["layers"]
    assert layers["x-kubernetes-list-type"] == "map"
    assert layers["x-kubernetes-list-map-keys"] == ["name"]
    assert layers["maxItems"] == models.MAX_LAYERS
    rules = [rule["rule"] for rule in layers["items"][schema_hints.VALIDATIONS]]
    assert "self.name != 'llm' || self.type.startsWith('model.')" in rules


def test_status_carries_no_defaults(version: dict[str, Any]) -> None:
    """Defaults in status would be written by the API server, not by the controller."""

    def defaults(node: dict[str, Any], path: str) -> Iterator[str]:
        if "default" in node:
            yield path
        for key, child in node.get("properties", {}).items():
            yield from defaults(child, f"{path}.{key}")
        if "items" in node:
            yield from defaults(node["items"], f"{path}[]")

    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert list(defaults(status, ".status")) == []
