"""Run semantics through `kubectl apply`: admission, success, and the request-shaped failures."""

from __future__ import annotations

import json
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.integration


def event_types(status: dict[str, Any]) -> list[str]:
    return [event["type"] for event in status["events"]]


def test_echo_run_succeeds_with_full_status(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.example("hello.yaml"), namespace)
    body = cluster.wait_phase("hello", namespace)
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["reason"] == "Succeeded"
    assert status["output"] == "echo: Say hello to the platform team."
    assert status["usage"]["requests"] == 1
    assert status["usage"]["inputTokens"] > 0
    assert status["startTime"] <= status["completionTime"]
    assert status["runner"]["mode"] == "task"
    assert status["runner"]["instance"] == operator.instance
    assert status["observedGeneration"] == body["metadata"]["generation"]
    [condition] = status["conditions"]
    assert condition["type"] == "Succeeded"
    assert condition["status"] == "True"
    assert condition["observedGeneration"] == body["metadata"]["generation"]
    assert event_types(status) == ["run_started", "model_request", "run_succeeded"]
    ids = [event["id"] for event in status["events"]]
    assert ids == [1, 2, 3]
    assert status["eventCount"] == 3
    succeeded = status["events"][-1]["data"]
    assert succeeded["output"] == status["output"]
    assert succeeded["usage"] == status["usage"]
    assert succeeded["sessionSnapshot"] == {"llm": "suspended", "prompt": "suspended"}
    layers = status["sessionSnapshot"]["layers"]
    assert [(layer["name"], layer["lifecycleState"]) for layer in layers] == [
        ("llm", "suspended"),
        ("prompt", "suspended"),
    ]
    # Finished runs carry no finalizer.
    cluster.wait_released("hello", namespace)


def test_kubectl_wait_for_succeeded_condition(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.example("structured-output.yaml"), namespace)
    result = cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=60s", "ar/summarize-incident"
    )
    assert "condition met" in result.stdout
    output = cluster.run_status("summarize-incident", namespace)["output"]
    assert output["severity"] in ("low", "medium", "high")
    assert len(output["bullets"]) >= 3


def _recursive_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}
        },
    }


SEEDS = [
    pytest.param(
        harness.echo_run("blank", ["", " "]),
        "run.user_prompts must not be empty",
        id="blank-prompts",
    ),
    pytest.param(
        harness.agent_run(
            "recursive",
            [
                {"name": "llm", "type": "model.echo"},
                {"name": "prompt", "type": "plain.prompt", "config": {"user": "go"}},
                {"name": "output", "type": "agentrun.output", "config": {"jsonSchema": _recursive_schema()}},
            ],
        ),
        "Recursive $defs refs are not supported for structured output exposure.",
        id="recursive-defs",
    ),
    pytest.param(
        harness.agent_run(
            "unregistered",
            [
                {"name": "llm", "type": "model.echo"},
                {"name": "prompt", "type": "custom.prompt", "config": {"user": "go"}},
            ],
        ),
        "Layer type id 'custom.prompt' is not registered.",
        id="unregistered-layer-type",
    ),
    pytest.param(
        harness.echo_run(
            "closed",
            "again",
            sessionSnapshot={
                "schemaVersion": 1,
                "layers": [
                    {"name": "llm", "lifecycleState": "suspended", "runtimeState": {}},
                    {"name": "prompt", "lifecycleState": "closed", "runtimeState": {}},
                ],
            },
        ),
        "Layer 'prompt' is closed; CLOSED snapshots cannot be entered.",
        id="closed-snapshot",
    ),
]


@pytest.mark.parametrize(("manifest", "message"), SEEDS)
def test_request_shaped_errors_fail_after_admission(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    manifest: dict[str, Any],
    message: str,
) -> None:
    name = manifest["metadata"]["name"]
    cluster.apply(manifest, namespace)  # accepted at admission: these are not schema errors
    body = cluster.wait_phase(name, namespace)
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "InvalidRequest"
    assert status["message"] == message
    assert event_types(status) == ["run_started", "run_failed"]
    assert status["events"][-1]["data"] == {"reason": "InvalidRequest", "message": message}
    [condition] = status["conditions"]
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "InvalidRequest", message)
    cluster.wait_released(name, namespace)

    def described() -> list[tuple[str, str, str]] | None:
        events = [(e["type"], e["reason"], e["message"]) for e in cluster.events_for(name, namespace)]
        return events if len(events) >= 2 else None

    events = harness.wait_until(described, timeout=15, what="Kubernetes Events for the run")
    assert ("Normal", "Started", f"run started by {operator.instance}") in events
    assert ("Warning", "Failed", message) in events
    describe = cluster.kubectl("describe", "ar", name, "-n", namespace).stdout
    assert "Started" in describe
    assert message in describe


def test_status_is_never_rewritten_after_terminal(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.echo_run("final", "once"), namespace)
    first = cluster.wait_phase("final", namespace)
    cluster.wait_released("final", namespace)
    # A label change is a new resourceVersion and a new watch event: the operator must not react.
    cluster.kubectl("label", "ar", "final", "-n", namespace, "touched=yes")
    # Once a run created after the label is done, the operator has seen the labelled version too.
    cluster.apply(harness.echo_run("later", "twice"), namespace)
    assert cluster.wait_phase("later", namespace)["status"]["phase"] == "Succeeded"

    labelled = cluster.get("agentrun", "final", namespace)
    assert labelled is not None
    # The operator's only label: it has finished with the run and no longer watches it.
    assert labelled["metadata"]["labels"] == {"touched": "yes", "agentrun.dev/finished": "true"}
    assert json.dumps(labelled["status"], sort_keys=True) == json.dumps(first["status"], sort_keys=True)
    if cluster.local is not None:  # the audit log: the four lifecycle writes and nothing after them
        writes = [(w.verb, w.subresource) for w in cluster.operator_writes(namespace) if w.name == "final"]
        assert writes == [("patch", ""), ("patch", "status"), ("patch", "status"), ("patch", "")]
