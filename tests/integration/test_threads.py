"""AgentThreads on a real API server: conversations across runs, overlapping runs, the seed rule, chat."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.integration


def thread(name: str, strategy: str = "enqueue", agent: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"multitaskStrategy": strategy}
    if agent:
        spec["agentRef"] = {"name": agent}
    return {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentThread", "metadata": {"name": name}, "spec": spec}


def turn(name: str, prompt: str, thread_name: str = "chat", *, delay: float = 0.0) -> dict[str, Any]:
    return harness.echo_run(name, prompt, delay=delay, threadRef={"name": thread_name})


def thread_status(cluster: harness.Cluster, namespace: str, name: str = "chat") -> dict[str, Any]:
    body = cluster.get("agentthread", name, namespace) or {}
    return dict(body.get("status") or {})


def test_a_conversation_goes_on_across_runs_without_copying_snapshots(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(thread("chat"), namespace)
    for i, prompt in enumerate(("my name is Ada", "I like tea", "what do you know?"), start=1):
        cluster.apply(turn(f"t{i}", prompt), namespace)
        cluster.wait_phase(f"t{i}", namespace)
    last = cluster.run_status("t3", namespace)
    assert last["output"] == "echo (turn 3): what do you know? | earlier you said: my name is Ada / I like tea"
    status = harness.wait_until(
        lambda: (lambda s: s if s.get("runCount") == 3 else None)(thread_status(cluster, namespace)),
        what="the thread to record three turns",
    )
    assert (status["phase"], status["lastRun"]) == ("Idle", "t3")
    assert "activeRun" not in status
    columns = cluster.kubectl("get", "thread", "chat", "-n", namespace).stdout.splitlines()[0].split()
    assert columns == ["NAME", "PHASE", "ACTIVE", "LAST", "RUNS", "AGE"]


@pytest.mark.parametrize(
    ("strategy", "outcome"),
    [
        pytest.param("enqueue", ("Succeeded", "Succeeded"), id="enqueue"),
        pytest.param("reject", ("Succeeded", "Failed"), id="reject"),
        pytest.param("interrupt", ("Cancelled", "Succeeded"), id="interrupt"),
        pytest.param("rollback", ("Cancelled", "Succeeded"), id="rollback"),
    ],
)
def test_overlapping_runs_follow_the_threads_strategy(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    strategy: str,
    outcome: tuple[str, str],
) -> None:
    cluster.apply(thread("chat", strategy), namespace)
    cluster.apply(turn("first", "the first question", delay=4), namespace)
    harness.wait_until(lambda: thread_status(cluster, namespace).get("activeRun") == "first", what="first to hold")
    cluster.apply(turn("second", "the second question"), namespace)

    first = cluster.wait_phase("first", namespace, timeout=60)["status"]
    second = cluster.wait_phase("second", namespace, timeout=60)["status"]

    assert (first["phase"], second["phase"]) == outcome
    if strategy == "reject":
        assert second["reason"] == "InvalidRequest"
        assert second["message"] == "AgentThread 'chat' is busy with run 'first' and its multitaskStrategy is reject"
    if strategy in ("interrupt", "rollback"):
        assert first["reason"] == "Interrupted"
        kept = "the first question" in second["output"]
        assert kept is (strategy == "interrupt")
    if strategy == "enqueue":
        assert second["startTime"] >= first["completionTime"]
        assert second["output"].endswith("earlier you said: the first question")


@pytest.mark.timeout(180)
def test_seed_rule_the_thread_follows_its_newest_run_across_a_crash(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    cluster.apply(thread("chat"), namespace)
    crashed = start_operator(namespace)
    cluster.apply(turn("older", "lost in the crash", delay=60), namespace)
    harness.wait_until(lambda: thread_status(cluster, namespace).get("activeRun") == "older", what="older to hold")
    cluster.apply(turn("newer", "after the crash"), namespace)
    crashed.signal(signal.SIGKILL)
    crashed.wait(timeout=10)
    start_operator(namespace)

    older = cluster.wait_phase("older", namespace, timeout=60)["status"]
    newer = cluster.wait_phase("newer", namespace, timeout=60)["status"]

    assert (older["phase"], older["reason"]) == ("Failed", "OperatorRestarted")
    assert newer["phase"] == "Succeeded"
    status = harness.wait_until(
        lambda: (lambda s: s if s.get("lastRun") == "newer" and "activeRun" not in s else None)(
            thread_status(cluster, namespace)
        ),
        what="the thread to follow the newer run",
    )
    assert status["phase"] == "Idle"  # not Error: the older run's failure does not stand
    history = json.dumps(status["history"])
    assert "after the crash" in history


@pytest.mark.timeout(300)
def test_a_long_conversation_moves_its_history_to_a_secret_and_goes_on(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, status_budget_bytes=16384)
    cluster.apply(thread("chat"), namespace)
    turns = 50
    for i in range(turns):
        cluster.apply(turn(f"t{i:02d}", f"turn number {i} with some padding to grow the history"), namespace)
        status = cluster.wait_phase(f"t{i:02d}", namespace, timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
    final = thread_status(cluster, namespace)
    assert final["runCount"] == turns
    assert "history" not in final
    ref = final["historyRef"]
    secret = cluster.get("secret", ref["name"], namespace)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "AgentThread"
    last = cluster.run_status(f"t{turns - 1:02d}", namespace)
    answer = last.get("output")
    if answer is None:  # the answer repeats the whole conversation: past the budget it is offloaded too
        output_ref = last["outputRef"]
        stored = cluster.get("secret", output_ref["name"], namespace)
        assert stored is not None
        answer = json.loads(base64.b64decode(stored["data"][output_ref["key"]]))
    assert answer.startswith(f"echo (turn {turns}): turn number {turns - 1} with some padding")
    assert "earlier you said: turn number 0 with some padding" in answer


def test_a_run_of_a_missing_thread_fails_with_a_clear_message(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(turn("lost", "hello?", "nowhere"), namespace)
    status = cluster.wait_phase("lost", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRequest")
    assert status["message"] == f"AgentThread 'nowhere' was not found in namespace '{namespace}'"


def test_deleting_a_thread_cancels_its_active_run(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(thread("chat"), namespace)
    cluster.apply(turn("talking", "a long story", delay=60), namespace)
    harness.wait_until(lambda: thread_status(cluster, namespace).get("activeRun") == "talking", what="it to hold")
    cluster.kubectl("delete", "agentthread", "chat", "-n", namespace)
    status = cluster.wait_phase("talking", namespace, timeout=30)["status"]
    assert (status["phase"], status["message"]) == ("Cancelled", "run cancelled: its AgentThread was deleted")


def test_kubectl_agentrun_chat_holds_a_conversation(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    agent = {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "echoer"},
        "spec": {"composition": {"layers": [{"name": "llm", "type": "model.echo"}]}},
    }
    cluster.apply(agent, namespace)
    cluster.apply(thread("talk", agent="echoer"), namespace)

    def chat(message: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("agentrun", "chat", "talk", message, "-n", namespace)

    first = chat("hello there")
    second = chat("do you remember me?")

    assert first.stdout.strip() == "echo: hello there"
    assert second.stdout.strip() == "echo (turn 2): do you remember me? | earlier you said: hello there"
    assert "run_succeeded" in second.stderr
