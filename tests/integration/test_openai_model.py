"""`model.openai` against a local OpenAI-compatible server: success, errors, retries, secrets, history."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fake_llm
import harness

pytestmark = pytest.mark.integration

API_KEY = "sk-test-4f1d2c9b8a7e6d5c"
KEY_FORMS = (API_KEY, base64.b64encode(API_KEY.encode()).decode())
"""The key as sent, and as a Secret's body carries it."""


@pytest.fixture(scope="module")
def llm() -> Iterator[fake_llm.FakeLLM]:
    server = fake_llm.FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def credentials(cluster: harness.Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "llm-credentials", "-n", namespace, f"--from-literal=api-key={API_KEY}"
    )


def openai_run(
    name: str, llm: fake_llm.FakeLLM, model: str, *, prompt: str = "Summarize incident 42.", **extra: Any
) -> dict[str, Any]:
    output = extra.pop("output", None)
    secret = extra.pop("secret", {"name": "llm-credentials", "key": "api-key"})
    settings = extra.pop("settings", {"temperature": 0.2, "maxTokens": 100})
    layers = [
        {
            "name": "llm",
            "type": "model.openai",
            "config": {
                "model": model,
                "baseURL": llm.base_url,
                "apiKeySecretRef": secret,
                "settings": settings,
            },
        },
        {"name": "prompt", "type": "plain.prompt", "config": {"prefix": "Be brief.", "user": prompt}},
    ]
    if output is not None:
        layers.append({"name": "output", "type": "agentrun.output", "config": {"jsonSchema": output}})
    return harness.agent_run(name, layers, **extra)


def assert_secret_nowhere(
    cluster: harness.Cluster, namespace: str, name: str, operator: harness.OperatorProcess
) -> None:
    body = json.dumps(cluster.get("agentrun", name, namespace))
    events = json.dumps(cluster.events_for(name, namespace))
    logs = operator.logs()
    for form in KEY_FORMS:
        assert form not in body
        assert form not in events
        assert form not in logs


def test_success_records_usage_and_uses_the_secret(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    cluster.apply(openai_run("ok", llm, "ok"), namespace)
    status = cluster.wait_phase("ok", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == "Hello from fake (turn 1)"
    assert status["usage"] == {"requests": 1, "inputTokens": 12, "outputTokens": 5}
    [request] = llm.bodies("ok")
    assert request["temperature"] == 0.2
    assert request["max_completion_tokens"] == 100
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarize incident 42."},
    ]
    assert llm.received[-1].authorization == f"Bearer {API_KEY}"
    assert_secret_nowhere(cluster, namespace, "ok", operator)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("r429", "returned HTTP 429: Rate limit reached for requests (rate_limit_exceeded)", id="429"),
        pytest.param("r500", "returned HTTP 500: The server had an error while processing your request", id="500"),
        pytest.param(
            "r401-echo",
            "returned HTTP 401: Incorrect API key provided: [redacted]. Check the key and try again. (invalid_api_key)",
            id="401-echoing-the-key",
        ),
    ],
)
def test_provider_errors_fail_with_model_error(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
    model: str,
    expected: str,
) -> None:
    cluster.apply(openai_run("provider-error", llm, model), namespace)
    status = cluster.wait_phase("provider-error", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ModelError")
    assert_secret_nowhere(cluster, namespace, "provider-error", operator)
    assert expected in status["message"]
    assert status["events"][-1]["type"] == "run_failed"


def test_invalid_structured_output_is_retried_then_output_invalid(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    schema = {"type": "object", "properties": {"bullets": {"type": "array"}}, "required": ["bullets"]}
    before = len(llm.bodies("tool-bad"))
    cluster.apply(openai_run("bad-output", llm, "tool-bad", output=schema), namespace)
    status = cluster.wait_phase("bad-output", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "OutputInvalid")
    assert "did not match the output schema after 3 attempts" in status["message"]
    attempts = llm.bodies("tool-bad")[before:]
    assert len(attempts) == 3
    # Each retry tells the model what was wrong.
    assert "'bullets' is a required property" in json.dumps(attempts[-1]["messages"])


def test_structured_output_succeeds(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    schema = {
        "type": "object",
        "properties": {"bullets": {"type": "array", "items": {"$ref": "#/$defs/Bullet"}}},
        "required": ["bullets"],
        "$defs": {"Bullet": {"type": "string"}},
    }
    cluster.apply(openai_run("good-output", llm, "structured", output=schema), namespace)
    status = cluster.wait_phase("good-output", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == fake_llm.STRUCTURED_ARGS
    tool = llm.bodies("structured")[-1]["tools"][0]["function"]
    assert "$defs" not in json.dumps(tool["parameters"])  # refs were inlined before the model saw them


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        pytest.param(
            {"name": "absent", "key": "api-key"},
            "Secret 'absent' with key 'api-key' was not found in namespace",
            id="missing-secret",
        ),
        pytest.param(
            {"name": "llm-credentials", "key": "token"},
            "Secret 'llm-credentials' with key 'token' was not found in namespace",
            id="missing-key",
        ),
    ],
)
def test_missing_secret_or_key_fails_naming_them(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
    secret: dict[str, str],
    expected: str,
) -> None:
    before = len(llm.received)
    cluster.apply(openai_run("no-secret", llm, "ok", secret=secret), namespace)
    status = cluster.wait_phase("no-secret", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "CredentialsUnavailable")
    assert expected in status["message"]
    assert len(llm.received) == before  # the model was never called
    assert_secret_nowhere(cluster, namespace, "no-secret", operator)


def test_second_turn_sees_the_first_turns_history(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    cluster.apply(openai_run("turn-1", llm, "ok", prompt="My name is Ada."), namespace)
    first = cluster.wait_phase("turn-1", namespace)["status"]
    assert first["phase"] == "Succeeded"
    cluster.apply(
        openai_run("turn-2", llm, "ok", prompt="What is my name?", sessionSnapshot=first["sessionSnapshot"]), namespace
    )
    second = cluster.wait_phase("turn-2", namespace)["status"]
    assert second["phase"] == "Succeeded", second
    assert second["output"] == "Hello from fake (turn 2)"
    messages = llm.bodies("ok")[-1]["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello from fake (turn 1)"},
        {"role": "user", "content": "What is my name?"},
    ]


def test_no_log_level_prints_the_key(
    cluster: harness.Cluster,
    namespace: str,
    start_operator: Any,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    """At DEBUG the operator reads the Secret, sends the key and gets it echoed back: none of it is printed."""
    operator = start_operator(namespace, log_level="DEBUG")
    cluster.apply(openai_run("debug-ok", llm, "ok"), namespace)
    cluster.apply(openai_run("debug-echo", llm, "r401-echo"), namespace)
    assert cluster.wait_phase("debug-ok", namespace)["status"]["phase"] == "Succeeded"
    failed = cluster.wait_phase("debug-echo", namespace)["status"]
    assert (failed["phase"], failed["reason"]) == ("Failed", "ModelError")
    assert llm.received[-1].authorization == f"Bearer {API_KEY}"  # the key did reach the provider
    assert "layer types registered" in operator.logs()  # a DEBUG line: the level really was DEBUG
    for name in ("debug-ok", "debug-echo"):
        assert_secret_nowhere(cluster, namespace, name, operator)
    assert "Incorrect API key provided: [redacted]" in failed["message"]


def test_a_request_timeout_ends_a_silent_provider(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    llm: fake_llm.FakeLLM,
    credentials: None,
) -> None:
    started = time.monotonic()
    cluster.apply(openai_run("silent", llm, "slow", settings={"timeoutSeconds": 1}), namespace)
    status = cluster.wait_phase("silent", namespace, timeout=30)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ModelError"), status
    assert "timed out" in status["message"].lower(), status["message"]
    assert time.monotonic() - started < 20
