"""The generated CRD on a real API server: accepted, explained, and strict at admission."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

import harness

pytestmark = pytest.mark.integration


def test_crd_is_established(cluster: harness.Cluster) -> None:
    crd = json.loads(cluster.kubectl("get", "crd", "agentruns.agentrun.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["ar"]
    assert crd["status"]["acceptedNames"]["categories"] == ["agentrun-all"]


def test_kubectl_explain_shows_model_descriptions(cluster: harness.Cluster) -> None:
    # The OpenAPI document is published shortly after the CRD is Established.
    def explained() -> str | None:
        result = cluster.kubectl("explain", "agentrun.spec.composition", check=False)
        return result.stdout if result.returncode == 0 else None

    text = harness.wait_until(explained, timeout=60, what="kubectl explain to know AgentRun")
    assert "The layers that make up the agent;" in text
    assert "Layers in the order they are entered. Names are unique." in text
    layer = cluster.kubectl("explain", "agentrun.spec.composition.layers.type").stdout
    assert "Registered layer type id" in layer
    status = cluster.kubectl("explain", "agentrun.status.eventCount").stdout
    assert "Events emitted in total" in status


@pytest.mark.parametrize("path", sorted(harness.EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_server_dry_run(cluster: harness.Cluster, namespace: str, path: Any) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert "(server dry run)" in result.stdout


VALID = harness.echo_run("valid", "hello")


def _mutated(change: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    change(manifest)
    return manifest


def _layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = manifest["spec"]["composition"]["layers"]
    return layers


MALFORMED = [
    pytest.param(
        lambda m: m["spec"].pop("composition"),
        "set spec.composition, or spec.agentRef to run an Agent",
        id="missing-composition",
    ),
    pytest.param(
        lambda m: m["spec"]["composition"].update(layers=[]),
        "spec.composition.layers: Invalid value: 0: spec.composition.layers in body should have at least 1 items",
        id="empty-layers",
    ),
    pytest.param(
        lambda m: _layers(m).append({"name": "prompt", "type": "plain.prompt"}),
        'Duplicate value: {"name":"prompt"}',
        id="duplicate-layer-names",
    ),
    pytest.param(
        lambda m: _layers(m).append({"name": "llm", "type": "model.echo"}),
        'Duplicate value: {"name":"llm"}',
        id="two-llm-layers",
    ),
    pytest.param(
        lambda m: _layers(m).extend(
            [{"name": "output", "type": "agentrun.output"}, {"name": "output", "type": "agentrun.output"}]
        ),
        'Duplicate value: {"name":"output"}',
        id="two-output-layers",
    ),
    pytest.param(
        lambda m: m["spec"].update(timeoutSeconds=-5),
        "spec.timeoutSeconds: Invalid value: -5: spec.timeoutSeconds in body should be greater than or equal to 1",
        id="negative-timeout",
    ),
    pytest.param(
        lambda m: _layers(m)[0].update(type="model.openai", config={"model": "gpt-4o-mini", "apiKey": "sk-inline"}),
        "an inline apiKey is not allowed: reference a Secret with apiKeySecretRef",
        id="inline-api-key",
    ),
    pytest.param(
        lambda m: _layers(m)[0].update(type="plain.prompt"),
        "layer name 'llm' is reserved for the model layer",
        id="llm-name-on-non-model",
    ),
    pytest.param(
        lambda m: m["spec"].update(runner={"mode": "thread"}),
        'spec.runner.mode: Unsupported value: "thread": supported values: "task", "pod"',
        id="unknown-runner-mode",
    ),
    pytest.param(
        lambda m: m["spec"].update(timeoutSeconds="soon"),
        'spec.timeoutSeconds: Invalid value: "string": spec.timeoutSeconds in body must be of type integer',
        id="wrong-type",
    ),
    pytest.param(lambda m: m["spec"].update(retries=3), 'unknown field "spec.retries"', id="unknown-field"),
    pytest.param(
        lambda m: _layers(m)[1].update(name="Prompt_1"),
        "spec.composition.layers[1].name in body should match",
        id="layer-name-not-dns",
    ),
]


@pytest.mark.parametrize(("change", "expected"), MALFORMED)
def test_malformed_manifests_are_rejected_at_admission(
    cluster: harness.Cluster, namespace: str, change: Any, expected: str
) -> None:
    manifest = _mutated(change)
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"accepted: {manifest}"
    assert expected in result.stderr
    assert cluster.get("agentrun", "valid", namespace) is None


def test_printer_columns(cluster: harness.Cluster, namespace: str) -> None:
    cluster.apply(VALID, namespace)  # no operator watches this namespace: it stays without status
    header = cluster.kubectl("get", "ar", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "REASON", "SUCCEEDED", "AGE"]
    wide = cluster.kubectl("get", "ar", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert wide == ["NAME", "PHASE", "REASON", "SUCCEEDED", "ATTEMPT", "MODE", "MESSAGE", "AGE"]
    listed = cluster.kubectl("get", "agentrun-all", "-n", namespace, "-o", "name").stdout.split()
    assert listed == ["agentrun.agentrun.dev/valid"]
