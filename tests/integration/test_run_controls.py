"""Run controls on a real API server: retries, time to live, cancelling a finished run, the attempt column."""

from __future__ import annotations

import datetime
import json
import pathlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fake_llm
import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm() -> Iterator[fake_llm.FakeLLM]:
    server = fake_llm.FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def watch(cluster: harness.Cluster, namespace: str, tmp_path: pathlib.Path) -> Iterator[harness.WatchRecorder]:
    recorder = harness.WatchRecorder(cluster, namespace, tmp_path)
    yield recorder
    recorder.stop()


def model_run(name: str, llm: fake_llm.FakeLLM, model: str, **spec: Any) -> dict[str, Any]:
    """A run on the fake OpenAI-compatible server (no key needed)."""
    layers = [
        {"name": "llm", "type": "model.openai", "config": {"model": model, "baseURL": llm.base_url}},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "Summarize incident 42."}},
    ]
    return harness.agent_run(name, layers, **spec)


def timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_transient_model_errors_are_retried_until_the_run_succeeds(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, llm: fake_llm.FakeLLM
) -> None:
    model = f"flaky-2-503-{namespace}"
    cluster.apply(model_run("flaky", llm, model, retry={"limit": 3, "backoffSeconds": 0.2}), namespace)

    status = cluster.wait_phase("flaky", namespace, timeout=60)["status"]

    assert (status["phase"], status["output"]) == ("Succeeded", "Hello from fake (turn 1)"), status
    attempts = [(a["number"], a["reason"], a.get("statusCode")) for a in status["attempts"]]
    assert attempts == [(1, "ModelError", 503), (2, "ModelError", 503), (3, "Succeeded", None)]
    types = [e["type"] for e in status["events"]]
    assert types.count("attempt_failed") == 2
    assert types.count("attempt_started") == 2
    assert (types[0], types[-1]) == ("run_started", "run_succeeded")
    assert len(llm.bodies(model)) == 3
    printed = cluster.kubectl("agentrun", "events", "flaky", "-n", namespace).stdout
    assert "attempt_failed" in printed
    assert "attempt=2" in printed
    wide = cluster.kubectl("get", "ar", "flaky", "-n", namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[:5] == ["NAME", "PHASE", "REASON", "SUCCEEDED", "ATTEMPT"]
    assert wide.splitlines()[1].split()[4] == "3"


def test_a_client_error_of_the_model_is_not_retried(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, llm: fake_llm.FakeLLM
) -> None:
    cluster.apply(model_run("bad", llm, "r400", retry={"limit": 3, "backoffSeconds": 0.2}), namespace)

    status = cluster.wait_phase("bad", namespace, timeout=60)["status"]

    assert (status["phase"], status["reason"]) == ("Failed", "ModelError")
    assert [(a["number"], a.get("statusCode")) for a in status["attempts"]] == [(1, 400)]
    assert len(llm.bodies("r400")) == 1


@pytest.mark.parametrize("reason", ["InvalidRequest", "OutputInvalid", "BudgetExceeded", "Cancelled"])
def test_reasons_that_are_never_retried_are_refused_at_admission(
    cluster: harness.Cluster, namespace: str, reason: str
) -> None:
    run = harness.echo_run("never", retry={"limit": 1, "retryOn": ["ModelError", reason]})
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(run), check=False)
    assert refused.returncode != 0
    assert "spec.retry.retryOn" in refused.stderr
    assert reason in refused.stderr


@pytest.mark.timeout(180)
def test_sigkill_during_a_backoff_resumes_the_same_schedule(
    cluster: harness.Cluster,
    namespace: str,
    start_operator: Callable[..., harness.OperatorProcess],
    llm: fake_llm.FakeLLM,
    watch: harness.WatchRecorder,
) -> None:
    first = start_operator(namespace)
    model = f"flaky-1-503-{namespace}"
    cluster.apply(model_run("resumed", llm, model, retry={"limit": 1, "backoffSeconds": 12}), namespace)

    def backing_off() -> dict[str, Any] | None:
        status = cluster.run_status("resumed", namespace)
        return status if status.get("reason") == "RetryBackoff" else None

    waiting = harness.wait_until(backing_off, timeout=30, what="the retry backoff")
    scheduled = timestamp(waiting["nextAttemptTime"])
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    start_operator(namespace)

    status = cluster.wait_phase("resumed", namespace, timeout=90)["status"]

    assert status["phase"] == "Succeeded", status
    second = status["attempts"][1]
    started = timestamp(second["startTime"])
    assert started >= scheduled  # not restarted early
    assert started - scheduled < datetime.timedelta(seconds=10)  # nor rescheduled later
    backoffs = {s.get("nextAttemptTime") for s in watch.versions("resumed") if s.get("reason") == "RetryBackoff"}
    assert backoffs == {waiting["nextAttemptTime"]}


@pytest.mark.timeout(120)
def test_finished_runs_are_deleted_after_their_time_to_live_across_a_restart(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    first = start_operator(namespace)
    cluster.apply(harness.echo_run("brief", "gone soon", ttlSecondsAfterFinished=6), namespace)
    cluster.apply(harness.echo_run("lasting", "kept"), namespace)
    completed = timestamp(cluster.wait_phase("brief", namespace)["status"]["completionTime"])
    cluster.wait_phase("lasting", namespace)
    first.stop()
    start_operator(namespace)

    harness.wait_until(lambda: cluster.get("agentrun", "brief", namespace) is None, timeout=60, what="the expiry")
    deleted = datetime.datetime.now(datetime.UTC)
    assert deleted - completed >= datetime.timedelta(seconds=6)
    assert cluster.get("agentrun", "lasting", namespace) is not None


def test_cancelling_a_finished_run_changes_nothing(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    run = harness.echo_run("done", "finished first")
    cluster.apply(run, namespace)
    before = cluster.wait_released("done", namespace)["status"]
    cluster.apply({**run, "spec": {**run["spec"], "cancel": True}}, namespace)
    # A run created afterwards finishing shows that the operator has seen the change.
    cluster.apply(harness.echo_run("later", "after"), namespace)
    cluster.wait_phase("later", namespace)
    assert cluster.run_status("done", namespace) == before
    # Its four lifecycle writes (finalizer, Running, Succeeded, release) and none since.
    assert len([w for w in cluster.operator_writes(namespace) if w.name == "done"]) == 4
