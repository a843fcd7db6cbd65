"""The run core on a real API server: exactly once, immutable specs, namesakes, owned Secrets.

Each test drives the operator as a real process with kubectl, as a user would.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.integration


@pytest.fixture
def watch(cluster: harness.Cluster, namespace: str, tmp_path: pathlib.Path) -> Iterator[harness.WatchRecorder]:
    recorder = harness.WatchRecorder(cluster, namespace, tmp_path)
    yield recorder
    recorder.stop()


def event_types(status: dict[str, Any]) -> list[str]:
    return [event["type"] for event in status.get("events") or []]


@pytest.mark.timeout(240)
def test_admission_survives_kube_apiserver_killed_mid_write(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    if cluster.local is None:
        pytest.skip("killing kube-apiserver needs the local control plane, not AGENTRUN_TEST_KUBECONFIG")
    # A Lease that outlasts the restart of kube-apiserver: the same leader sees every run through.
    start_operator(namespace, lease_duration_seconds=40, lease_renew_deadline_seconds=30)
    count = 30
    manifest = "\n---\n".join(json.dumps(harness.echo_run(f"r{i}", f"turn {i}", delay=2)) for i in range(count))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)

    def admitting() -> bool:
        items = json.loads(cluster.kubectl("get", "ar", "-n", namespace, "-o", "json").stdout)["items"]
        return any((item.get("status") or {}).get("phase") == "Running" for item in items)

    harness.wait_until(admitting, timeout=30, interval=0.02, what="the first admission")
    cluster.local.kill_apiserver()  # admissions in flight: some applied, their replies lost
    cluster.local.start_apiserver()

    for i in range(count):
        status = cluster.wait_phase(f"r{i}", namespace, timeout=120)["status"]
        assert (status["phase"], status["output"]) == ("Succeeded", f"echo: turn {i}"), status
        assert event_types(status) == ["run_started", "model_request", "run_succeeded"], status["events"]
        assert [(a["number"], a["reason"]) for a in status["attempts"]] == [(1, "Succeeded")]


def test_spec_is_immutable_except_cancel_which_stops_the_run(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    run = harness.echo_run("fixed", "first words", delay=60)
    cluster.apply(run, namespace)
    cluster.wait_phase("fixed", namespace, "Running")

    edited = json.loads(json.dumps(run))
    edited["spec"]["composition"]["layers"][1]["config"]["user"] = "other words"
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(edited), check=False)
    assert refused.returncode != 0
    assert "spec.composition cannot change after the run is created" in refused.stderr

    cancelled = {**run, "spec": {**run["spec"], "cancel": True}}
    cluster.apply(cancelled, namespace)  # GitOps: a plain apply of the same manifest with cancel: true
    status = cluster.wait_phase("fixed", namespace, timeout=20)["status"]
    assert (status["phase"], status["reason"], status["message"]) == (
        "Cancelled",
        "Cancelled",
        "run cancelled by request",
    )
    assert event_types(status)[-1] == "run_cancelled"
    uncancel = cluster.kubectl(
        "patch", "ar", "fixed", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":false}}', check=False
    )
    assert "spec.cancel cannot go back to false" in uncancel.stderr
    assert cluster.wait_released("fixed", namespace)["status"]["phase"] == "Cancelled"


def test_a_cancelled_queued_run_never_starts(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, max_concurrent_runs=1)
    cluster.apply(harness.echo_run("busy", "hold", delay=3), namespace)
    cluster.wait_phase("busy", namespace, "Running")
    waiting = harness.echo_run("waiting", "never")
    cluster.apply(waiting, namespace)
    harness.wait_until(lambda: cluster.run_status("waiting", namespace).get("reason") == "Queued", what="queued")
    cluster.apply({**waiting, "spec": {**waiting["spec"], "cancel": True}}, namespace)

    status = cluster.wait_phase("waiting", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Cancelled", "Cancelled")
    assert status.get("attempts", []) == []
    assert event_types(status) == ["run_cancelled"]
    assert cluster.wait_phase("busy", namespace)["status"]["phase"] == "Succeeded"


def test_replace_force_runs_the_new_object_under_the_same_name(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, watch: harness.WatchRecorder
) -> None:
    cluster.apply(harness.echo_run("same", "old request", delay=60), namespace)
    old_uid = cluster.wait_phase("same", namespace, "Running")["metadata"]["uid"]
    replacement = json.dumps(harness.echo_run("same", "new request"))
    cluster.kubectl("replace", "--force", "-n", namespace, "-f", "-", stdin=replacement)

    body = cluster.wait_phase("same", namespace, timeout=30)
    assert body["metadata"]["uid"] != old_uid
    assert (body["status"]["phase"], body["status"]["output"]) == ("Succeeded", "echo: new request")
    old = [e["object"] for e in watch.events() if e["object"]["metadata"]["uid"] == old_uid]
    assert (old[-1].get("status") or {}).get("phase") == "Cancelled"


def test_offload_never_writes_a_secret_the_run_does_not_own(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, status_budget_bytes=1024)
    cluster.apply(harness.echo_run("squatted", "x " * 2000, delay=3), namespace)
    uid = cluster.wait_phase("squatted", namespace, "Running")["metadata"]["uid"]
    name = f"squatted-output-{uid[:8]}"
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace, "--from-literal=mine=precious")

    status = cluster.wait_phase("squatted", namespace, timeout=30)["status"]

    assert (status["phase"], status["reason"]) == ("Failed", "ResultNotStored")
    assert f"Secret {name}" in status["message"]
    assert "not owned by the AgentRun" in status["message"]
    secret = cluster.get("secret", name, namespace)
    assert secret is not None
    assert base64.b64decode(secret["data"]["mine"]) == b"precious"
    assert "ownerReferences" not in secret["metadata"]


def test_an_offloaded_session_continues_with_session_snapshot_ref(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, status_budget_bytes=1024)
    first_prompt = "remember " * 100
    cluster.apply(harness.echo_run("turn-1", first_prompt), namespace)
    first = cluster.wait_phase("turn-1", namespace)["status"]
    assert first["phase"] == "Succeeded", first
    ref = first["sessionSnapshotRef"]
    assert "sessionSnapshot" not in first

    follow_up = harness.echo_run("turn-2", "and now?", sessionSnapshotRef={"name": ref["name"], "key": ref["key"]})
    cluster.apply(follow_up, namespace)
    second = cluster.wait_phase("turn-2", namespace)["status"]

    assert second["phase"] == "Succeeded", second
    output_ref = second["outputRef"]  # the answer repeats the long first turn: offloaded too
    secret = cluster.get("secret", output_ref["name"], namespace)
    assert secret is not None
    output = json.loads(base64.b64decode(secret["data"][output_ref["key"]]))
    assert output.startswith("echo (turn 2): and now? | earlier you said: remember")


def test_both_session_fields_at_once_are_refused_at_admission(cluster: harness.Cluster, namespace: str) -> None:
    snapshot = {"schemaVersion": 1, "layers": []}
    run = harness.echo_run("both", sessionSnapshot=snapshot, sessionSnapshotRef={"name": "s", "key": "k"})
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(run), check=False)
    assert refused.returncode != 0
    assert "set at most one of spec.sessionSnapshot and spec.sessionSnapshotRef" in refused.stderr


def test_every_attempt_is_in_the_ledger_before_it_runs(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, watch: harness.WatchRecorder
) -> None:
    cluster.apply(harness.echo_run("ledger", "hi", delay=1), namespace)
    status = cluster.wait_phase("ledger", namespace)["status"]
    [attempt] = status["attempts"]
    assert (attempt["number"], attempt["mode"], attempt["instance"]) == (1, "task", operator.instance)
    assert attempt["reason"] == "Succeeded"
    # The Running version that the watch saw already carried the attempt.
    running = [s for s in watch.versions("ledger") if s.get("phase") == "Running"]
    assert running
    assert all(len(s["attempts"]) == 1 and "completionTime" not in s["attempts"][0] for s in running)


@pytest.fixture
def deep_json() -> Iterator[None]:
    """This test reads the deep object back too: let the test process decode it."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    yield
    sys.setrecursionlimit(limit)


@pytest.mark.usefixtures("deep_json")
def test_a_deeply_nested_run_does_not_stop_the_watch(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    levels = 700  # about 1,400 JSON levels: past Python's default recursion limit
    schema = '{"type":"object","properties":{"x":' * levels + '{"type":"object"}' + "}}" * levels
    layers = [
        {"name": "llm", "type": "model.echo"},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
        {"name": "output", "type": "agentrun.output", "config": {"jsonSchema": "SCHEMA"}},
    ]
    manifest = json.dumps(harness.agent_run("deep", layers)).replace('"SCHEMA"', schema)
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=manifest)
    cluster.apply(harness.echo_run("after", "still watching"), namespace)

    assert cluster.wait_phase("after", namespace, timeout=60)["status"]["phase"] == "Succeeded"
    deep_status = cluster.wait_phase("deep", namespace, timeout=60)["status"]
    assert (deep_status["phase"], deep_status["reason"]) == ("Failed", "InvalidRequest")
