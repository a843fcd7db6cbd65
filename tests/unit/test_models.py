"""The API models: the design's example parses, the wire format round-trips."""

from __future__ import annotations

import datetime
from typing import Any

import pydantic
import pytest
import yaml

from agentrun.api import models

# The example of DESIGN.md section 2, without its status.
DESIGN_EXAMPLE = """
apiVersion: agentrun.dev/v1alpha1
kind: AgentRun
metadata: {name: summarize-incident, namespace: team-a}
spec:
  composition:
    layers:
      - name: llm
        type: model.openai
        config:
          model: gpt-4o-mini
          baseURL: https://llm.internal/v1
          apiKeySecretRef: {name: llm-credentials, key: api-key}
          settings: {temperature: 0.2, maxTokens: 800}
      - name: prompt
        type: plain.prompt
        config:
          prefix: You are a concise SRE assistant.
          user: ["Summarize incident 42 in three bullet points."]
      - name: output
        type: agentrun.output
        config:
          jsonSchema: {type: object, properties: {bullets: {type: array, items: {type: string}}}, required: [bullets]}
  sessionSnapshot: null
  runner: {mode: task}
  timeoutSeconds: 600
"""


@pytest.fixture
def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DESIGN_EXAMPLE)
    return document


def test_design_example_parses(example: dict[str, Any]) -> None:
    run = models.AgentRun.model_validate(example)
    spec = run.spec
    assert [(layer.name, layer.type) for layer in spec.composition.layers] == [
        ("llm", "model.openai"),
        ("prompt", "plain.prompt"),
        ("output", "agentrun.output"),
    ]
    assert spec.composition.layers[0].config["apiKeySecretRef"] == {"name": "llm-credentials", "key": "api-key"}
    assert spec.session_snapshot is None
    assert spec.session_exit is models.SessionExit.SUSPEND
    assert spec.mode is models.RunnerMode.TASK
    assert spec.timeout_seconds == 600
    assert run.metadata["name"] == "summarize-incident"
    assert run.status == models.AgentRunStatus()


def test_spec_round_trips_through_the_wire(example: dict[str, Any]) -> None:
    spec = models.AgentRunSpec.model_validate(example["spec"])
    wire = spec.to_wire()
    assert models.AgentRunSpec.model_validate(wire) == spec
    assert "sessionSnapshot" not in wire  # unset optionals are not written
    assert wire["timeoutSeconds"] == 600
    assert wire["sessionExit"] == "suspend"
    assert wire["composition"]["layers"][0]["config"]["baseURL"] == "https://llm.internal/v1"


def test_status_round_trips_with_utc_timestamps() -> None:
    eastern = datetime.timezone(datetime.timedelta(hours=-5))
    status = models.AgentRunStatus(
        phase=models.Phase.SUCCEEDED,
        reason="Succeeded",
        start_time=datetime.datetime(2025, 1, 1, 7, 0, tzinfo=eastern),
        output={"bullets": ["a"]},
        usage=models.Usage(requests=1, input_tokens=2, output_tokens=3),
        events=[models.RunEvent(id=1, type="run_started", time=datetime.datetime(2025, 1, 1, 12, tzinfo=datetime.UTC))],
        event_count=1,
    )
    wire = status.to_wire()
    assert wire["startTime"] == "2025-01-01T12:00:00.000000Z"
    assert wire["usage"] == {"requests": 1, "inputTokens": 2, "outputTokens": 3}
    assert wire["eventCount"] == 1
    assert models.AgentRunStatus.model_validate(wire) == status


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        pytest.param(lambda spec: spec.update(unknownField=1), "unknownField", id="unknown-spec-field"),
        pytest.param(lambda spec: spec["composition"].update(layers=[]), "layers", id="no-layers"),
        pytest.param(
            lambda spec: spec["composition"]["layers"][0].update(name="LLM_Model"), "name", id="layer-name-pattern"
        ),
        pytest.param(lambda spec: spec.update(timeoutSeconds=0), "timeoutSeconds", id="zero-timeout"),
        pytest.param(lambda spec: spec.update(runner={"mode": "vm"}), "mode", id="unknown-runner-mode"),
        pytest.param(lambda spec: spec.update(sessionExit="pause"), "sessionExit", id="unknown-session-exit"),
        pytest.param(
            lambda spec: spec.update(sessionSnapshot={"schemaVersion": 2, "layers": []}),
            "schemaVersion",
            id="future-snapshot-version",
        ),
    ],
)
def test_invalid_specs_are_rejected(example: dict[str, Any], mutate: Any, where: str) -> None:
    spec = example["spec"]
    mutate(spec)
    with pytest.raises(pydantic.ValidationError) as rejected:
        models.AgentRunSpec.model_validate(spec)
    assert where in str(rejected.value)


def test_status_ignores_fields_of_other_versions() -> None:
    status = models.AgentRunStatus.model_validate({"phase": "Running", "somethingNew": True})
    assert status.phase is models.Phase.RUNNING


@pytest.mark.parametrize(
    ("phase", "terminal"),
    [
        pytest.param(models.Phase.PENDING, False, id="pending"),
        pytest.param(models.Phase.RUNNING, False, id="running"),
        pytest.param(models.Phase.SUCCEEDED, True, id="succeeded"),
        pytest.param(models.Phase.FAILED, True, id="failed"),
        pytest.param(models.Phase.CANCELLED, True, id="cancelled"),
    ],
)
def test_terminal_phases(phase: models.Phase, terminal: bool) -> None:
    assert phase.terminal is terminal


def test_every_field_has_a_description() -> None:
    undescribed = [
        f"{model.__name__}.{name}"
        for model in models.ApiModel.__subclasses__()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undescribed == []


def test_reasons_of_the_design_exist() -> None:
    design = {
        "Pending",
        "Running",
        "Succeeded",
        "InvalidRequest",
        "ModelError",
        "OutputInvalid",
        "DeadlineExceeded",
        "Cancelled",
        "OperatorShutdown",
        "OperatorRestarted",
        "PodFailed",
    }
    assert design <= {reason.value for reason in models.Reason}


AGENT = models.AgentSpec.model_validate(
    {
        "description": "SRE helper",
        "composition": {
            "layers": [
                {"name": "llm", "type": "model.echo"},
                {"name": "system", "type": "plain.prompt", "config": {"prefix": "Be brief."}},
                {"name": "output", "type": "agentrun.output", "config": {"jsonSchema": {"type": "object"}}},
            ]
        },
        "defaults": {"timeoutSeconds": 60, "retry": {"limit": 2}, "runner": {"mode": "task"}},
    }
)


def test_a_run_overrides_an_agents_layers_by_name_and_adds_its_own() -> None:
    spec = models.AgentRunSpec.model_validate(
        {
            "agentRef": {"name": "sre"},
            "composition": {
                "layers": [
                    {"name": "system", "type": "plain.prompt", "config": {"prefix": "Be very brief."}},
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
                ]
            },
        }
    )
    resolved = models.resolve(spec, AGENT)
    assert resolved.composition is not None
    layers = [(layer.name, layer.config) for layer in resolved.composition.layers]
    assert layers == [
        ("llm", {}),
        ("system", {"prefix": "Be very brief."}),  # replaced whole, in the Agent's order
        ("output", {"jsonSchema": {"type": "object"}}),
        ("prompt", {"user": "hi"}),  # added after the Agent's layers
    ]
    assert resolved.timeout_seconds == 60
    assert resolved.retry is not None
    assert resolved.retry.limit == 2


def test_settings_the_run_sets_win_over_the_agents_defaults() -> None:
    spec = models.AgentRunSpec.model_validate(
        {"agentRef": {"name": "sre"}, "timeoutSeconds": 5, "retry": {"limit": 0}, "ttlSecondsAfterFinished": 0}
    )
    resolved = models.resolve(spec, AGENT)
    assert resolved.timeout_seconds == 5
    assert resolved.retry is not None
    assert resolved.retry.limit == 0
    assert resolved.ttl_seconds_after_finished == 0


def test_without_an_agent_the_spec_is_unchanged() -> None:
    spec = models.AgentRunSpec.model_validate({"composition": {"layers": [{"name": "llm", "type": "model.echo"}]}})
    assert models.resolve(spec, None) is spec
