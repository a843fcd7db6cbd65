"""The runner Pod's manifest, its name, and the runner's JSON-lines protocol."""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import re
from typing import Any

import pytest

from agentrun.api import models
from agentrun.layers import registry
from agentrun.pods import entry, protocol, spec


def run_spec(**runner: Any) -> models.AgentRunSpec:
    return models.AgentRunSpec.model_validate(
        {
            "composition": {
                "layers": [
                    {
                        "name": "llm",
                        "type": "model.openai",
                        "config": {"model": "m", "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"}},
                    },
                    {"name": "tools", "type": "tools.mcp", "config": {"headersSecretRef": {"name": "mcp", "key": "h"}}},
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
                ]
            },
            "runner": {"mode": "pod", **runner},
        }
    )


def build(**runner: Any) -> dict[str, Any]:
    return spec.build_pod(
        namespace="ns",
        run_name="summarize",
        run_uid="0123456789ab",
        attempt=2,
        pod_name="summarize-01234-a2",
        spec=run_spec(**runner),
        defaults=spec.PodDefaults(image="agentrun-operator:1.0"),
        deadline_seconds=99.2,
    )


def test_the_pod_meets_the_restricted_profile_and_mounts_no_token() -> None:
    pod = build()
    pod_spec = pod["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod_spec  # the namespace's default, with no token mounted
    assert pod_spec["activeDeadlineSeconds"] == 100 + spec.DEADLINE_SLACK_SECONDS
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    [container] = pod_spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "agentrun-operator:1.0"
    assert container["args"] == ["runner"]
    assert "env" not in container
    assert "envFrom" not in container
    assert {v["name"] for v in pod_spec["volumes"]} == {"input", "credentials", "tmp"}
    [owner] = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("AgentRun", "0123456789ab", True)
    assert pod["metadata"]["labels"][models.ATTEMPT_LABEL] == "2"


def test_credentials_are_projected_files_one_per_referenced_key() -> None:
    [credentials] = [v for v in build()["spec"]["volumes"] if v["name"] == "credentials"]
    sources = credentials["projected"]["sources"]
    assert sources == [
        {"secret": {"name": "llm-credentials", "items": [{"key": "api-key", "path": "llm-credentials/api-key"}]}},
        {"secret": {"name": "mcp", "items": [{"key": "h", "path": "mcp/h"}]}},
    ]


def test_the_run_chooses_image_resources_isolation_and_placement() -> None:
    pod_spec = build(
        image="mine:2",
        resources={"limits": {"memory": "64Mi"}},
        runtimeClassName="gvisor",
        nodeSelector={"pool": "agents"},
        tolerations=[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        serviceAccountName="workload-identity",
    )["spec"]
    [container] = pod_spec["containers"]
    assert container["image"] == "mine:2"
    assert container["resources"] == {"limits": {"memory": "64Mi"}}
    assert pod_spec["runtimeClassName"] == "gvisor"
    assert pod_spec["nodeSelector"] == {"pool": "agents"}
    assert pod_spec["tolerations"] == [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]
    assert (pod_spec["serviceAccountName"], pod_spec["automountServiceAccountToken"]) == ("workload-identity", False)


@pytest.mark.parametrize(
    ("name", "uid", "attempt", "expected"),
    [
        ("hello", "abcdef123", 1, "hello-abcde-a1"),
        ("a" * 80, "abcdef123", 12, "a" * (63 - len("-abcde-a12")) + "-abcde-a12"),
        ("dots.and-dashes-" + "x" * 60, "abcdef", 3, None),
    ],
)
def test_pod_names_are_deterministic_dns_labels(name: str, uid: str, attempt: int, expected: str | None) -> None:
    pod_name = models.runner_pod_name(name, uid, attempt)
    assert len(pod_name) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", pod_name), pod_name
    assert pod_name == models.runner_pod_name(name, uid, attempt)
    assert pod_name[0].isalnum()
    assert pod_name[-1].isalnum()
    if expected is not None:
        assert pod_name == expected


def test_records_round_trip_and_other_log_lines_are_not_records() -> None:
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    event = protocol.Event(3, "tool_call", at, {"tool": "t"})
    assert protocol.parse(protocol.event_line(event)) == event
    failed = protocol.Result(protocol.FAILED, reason="ModelError", message="429", status_code=429, events=3)
    assert protocol.parse(protocol.result_line(failed)) == failed
    for line in ("", "Traceback (most recent call last):", '{"level": "info"}', '{"agentrun": 99, "kind": "event"}'):
        assert protocol.parse(line) is None
    summary = json.loads(protocol.summary(failed, token_mounted=False))
    assert summary == {
        "outcome": "failed",
        "events": 3,
        "tokenMounted": False,
        "reason": "ModelError",
        "message": "429",
    }


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line)

    def flush(self) -> None:
        pass


async def test_the_runner_prints_numbered_events_then_one_result(tmp_path: pathlib.Path) -> None:
    document = json.loads(entry.input_document("ns", spec.runner_input(run_spec())))
    document["spec"]["composition"]["layers"] = [
        {"name": "llm", "type": "model.echo"},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
    ]
    sink = Lines()
    out = entry.Output(sink)  # type: ignore[arg-type]
    result = await entry.attempt(
        document, out, secrets_dir=tmp_path, layer_registry=registry.LayerRegistry.from_entry_points()
    )
    assert (result.outcome, result.output, result.events) == (protocol.SUCCEEDED, "echo: hi", 1)
    [event] = [protocol.parse(line) for line in sink.lines]
    assert isinstance(event, protocol.Event)
    assert (event.seq, event.type) == (1, "model_request")


async def test_a_stopped_runner_reports_cancelled(tmp_path: pathlib.Path) -> None:
    document = json.loads(entry.input_document("ns", spec.runner_input(run_spec())))
    document["spec"]["composition"]["layers"] = [
        {"name": "llm", "type": "model.echo", "config": {"delaySeconds": 60}},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
    ]
    out = entry.Output(Lines())  # type: ignore[arg-type]
    work = asyncio.ensure_future(
        entry.attempt(document, out, secrets_dir=tmp_path, layer_registry=registry.LayerRegistry.from_entry_points())
    )
    await asyncio.sleep(0)  # the attempt has begun
    work.cancel()  # what SIGTERM does
    result = await work
    assert result.outcome == protocol.CANCELLED


async def test_a_missing_credential_file_is_credentials_unavailable(tmp_path: pathlib.Path) -> None:
    read = entry.read_secret_file(tmp_path)
    (tmp_path / "llm-credentials").mkdir()
    (tmp_path / "llm-credentials" / "api-key").write_text("sk-value")
    assert await read("llm-credentials", "api-key") == "sk-value"
    with pytest.raises(Exception, match="Secret 'other' with key 'k' is not mounted in the runner Pod"):
        await read("other", "k")
