"""No run is ever left Running: delete, SIGTERM drain, crash recovery, API-server outage.

The operator runs as a real process that these tests signal and kill; what was
written is checked on the API server, through watches and its audit log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config

import harness
import manifests

pytestmark = pytest.mark.integration

SHUTDOWN_MESSAGE = "run cancelled during operator shutdown"
RIDES_OUT_OUTAGES = {"lease_duration_seconds": 40, "lease_renew_deadline_seconds": 30}
"""A Lease that outlasts the API-server outages these tests cause on purpose."""


@pytest.fixture
def watch(cluster: harness.Cluster, namespace: str, tmp_path: pathlib.Path) -> Iterator[harness.WatchRecorder]:
    recorder = harness.WatchRecorder(cluster, namespace, tmp_path)
    yield recorder
    recorder.stop()


def phases(items: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter((item.get("status") or {}).get("phase", "<none>") for item in items)


def list_runs(cluster: harness.Cluster, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", "ar", "-n", namespace, "-o", "json").stdout)["items"])


def test_deleting_a_running_run_records_cancelled_then_releases_it(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, watch: harness.WatchRecorder
) -> None:
    cluster.apply(harness.echo_run("doomed", "wait", delay=60), namespace)
    running = cluster.wait_phase("doomed", namespace, "Running")
    assert running["metadata"]["finalizers"] == ["agentrun.dev/finalizer"]
    started = time.monotonic()
    cluster.kubectl("delete", "ar", "doomed", "-n", namespace, "--timeout=30s")  # returns once it is gone
    assert time.monotonic() - started < 10
    assert cluster.get("agentrun", "doomed", namespace) is None
    final = harness.wait_until(
        lambda: [s for s in watch.versions("doomed") if s.get("phase") == "Cancelled"],
        what="the watch to show the Cancelled status",
    )[-1]
    assert final["reason"] == "Cancelled"
    assert final["message"] == "run cancelled: the AgentRun was deleted while running"
    assert [e["type"] for e in final["events"]][-1] == "run_cancelled"


def test_sigterm_drain_keeps_finished_results_and_fails_the_rest(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    grace = 4.0
    operator = start_operator(namespace, shutdown_grace_seconds=grace)
    for i in range(3):
        cluster.apply(harness.echo_run(f"short-{i}", "quick", delay=1), namespace)
        cluster.apply(harness.echo_run(f"long-{i}", "slow", delay=120), namespace)
    for i in range(3):
        cluster.wait_phase(f"long-{i}", namespace, "Running")
        cluster.wait_phase(f"short-{i}", namespace, "Running", "Succeeded")

    signalled = time.monotonic()
    operator.signal(signal.SIGTERM)
    operator.signal(signal.SIGTERM)  # a second signal must not abandon the drain
    code = operator.wait(timeout=grace + 10)
    elapsed = time.monotonic() - signalled
    assert code == 0, operator.logs()[-2000:]
    assert elapsed < grace + 2.0, f"exit took {elapsed:.1f}s for a grace of {grace}s"

    for i in range(3):
        short = cluster.run_status(f"short-{i}", namespace)
        assert (short["phase"], short["output"]) == ("Succeeded", "echo: quick")
        long = cluster.get("agentrun", f"long-{i}", namespace)
        assert long is not None
        status = long["status"]
        assert (status["phase"], status["reason"], status["message"]) == (
            "Failed",
            "OperatorShutdown",
            SHUTDOWN_MESSAGE,
        )
        assert status["events"][-1]["type"] == "run_failed"
        assert status["events"][-1]["data"]["message"] == SHUTDOWN_MESSAGE
        assert "finalizers" not in long["metadata"]


def test_runs_created_during_shutdown_wait_for_the_next_instance(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    first = start_operator(namespace, shutdown_grace_seconds=4)
    cluster.apply(harness.echo_run("keeps-it-busy", "slow", delay=120), namespace)
    cluster.wait_phase("keeps-it-busy", namespace, "Running")
    first.signal(signal.SIGTERM)
    harness.wait_until(lambda: "draining" in first.logs(), what="the drain to begin")
    for i in range(3):
        cluster.apply(harness.echo_run(f"late-{i}", f"late {i}"), namespace)
    assert first.wait(timeout=20) == 0
    for i in range(3):
        late = cluster.get("agentrun", f"late-{i}", namespace)
        assert late is not None
        assert "status" not in late, late["status"]  # untouched: not admitted, not queued
        assert "finalizers" not in late["metadata"]

    start_operator(namespace)
    for i in range(3):
        status = cluster.wait_phase(f"late-{i}", namespace)["status"]
        assert (status["phase"], status["output"]) == ("Succeeded", f"echo: late {i}")


def test_sigkill_then_restart_fails_orphans_with_operator_restarted(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    crashed = start_operator(namespace)
    cluster.apply(harness.echo_run("orphan", "slow", delay=120), namespace)
    cluster.wait_phase("orphan", namespace, "Running")
    crashed.kill()
    killed_at = time.monotonic()

    start_operator(namespace)
    body = cluster.wait_phase("orphan", namespace, timeout=30)
    status = body["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "OperatorRestarted")
    assert f"the operator instance {crashed.instance} that ran this run stopped" in status["message"]
    assert status["events"][-1]["type"] == "run_failed"
    cluster.wait_released("orphan", namespace)
    # The new instance takes the Lease once it has seen it unrenewed for the lease duration.
    assert time.monotonic() - killed_at < harness.TEST_LEASE["lease_duration_seconds"] + 15


async def _create_burst(kubeconfig: str, namespace: str, manifests: list[dict[str, Any]]) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)
        for start in range(0, len(manifests), 50):
            await asyncio.gather(
                *(
                    custom.create_namespaced_custom_object("agentrun.dev", "v1alpha1", namespace, "agentruns", m)
                    for m in manifests[start : start + 50]
                )
            )


def test_stress_with_a_crash_leaves_every_run_terminal_exactly_once(
    cluster: harness.Cluster,
    namespace: str,
    start_operator: Callable[..., harness.OperatorProcess],
    watch: harness.WatchRecorder,
) -> None:
    total = 200
    settings = {"max_concurrent_runs": 40}
    crashed = start_operator(namespace, **settings)
    manifests = [harness.echo_run(f"stress-{i}", f"request {i}", delay=(i % 5) * 0.3) for i in range(total)]
    asyncio.run(_create_burst(str(cluster.kubeconfig), namespace, manifests))
    harness.wait_until(
        lambda: phases(list_runs(cluster, namespace))["Succeeded"] >= total // 4,
        timeout=120,
        what="a quarter of the runs to finish",
    )
    crashed.kill()
    at_crash = phases(list_runs(cluster, namespace))
    start_operator(namespace, **settings)

    items = harness.wait_until(
        lambda: (lambda runs: runs if all(p in harness.TERMINAL for p in phases(runs)) else None)(
            list_runs(cluster, namespace)
        ),
        timeout=180,
        what="every run to be terminal",
    )
    final = phases(items)
    print(f"\nstress: {total} runs; at the crash {dict(at_crash)}; at the end {dict(final)}")
    assert sum(final.values()) == total
    assert final["Succeeded"] + final["Failed"] == total
    assert final["Failed"] == sum(1 for i in items if i["status"]["reason"] == "OperatorRestarted")
    assert final["Failed"] <= at_crash["Running"]
    for item in items:
        status = item["status"]
        terminal_events = [e for e in status["events"] if e["type"] in ("run_succeeded", "run_failed")]
        assert len(terminal_events) == 1, status["events"]
        cluster.wait_released(item["metadata"]["name"], namespace)

    # The watch saw every version: once terminal, a run's status never changed again.
    harness.wait_until(
        lambda: len(watch.terminal_names()) == total,
        timeout=60,
        what=f"the watch to see every run terminal (kubectl restarts: {watch.restarts})",
    )
    first_terminal: dict[str, str] = {}
    for event in watch.events():
        name = event["object"]["metadata"]["name"]
        status = event["object"].get("status") or {}
        if status.get("phase") in harness.TERMINAL:
            snapshot = json.dumps(status, sort_keys=True)
            assert first_terminal.setdefault(name, snapshot) == snapshot, f"{name}: terminal status overwritten"


@pytest.mark.timeout(240)
def test_operator_survives_an_api_server_outage(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    if cluster.local is None:
        pytest.skip("stopping kube-apiserver needs the local control plane, not AGENTRUN_TEST_KUBECONFIG")
    # An outage shorter than the Lease's renew deadline is ridden out: the leader keeps leading.
    start_operator(namespace, **RIDES_OUT_OUTAGES)
    for i in range(3):
        cluster.apply(harness.echo_run(f"through-outage-{i}", f"outage {i}", delay=6), namespace)
    for i in range(3):
        cluster.wait_phase(f"through-outage-{i}", namespace, "Running")
    cluster.local.stop_apiserver()
    outage_started = time.monotonic()
    harness.wait_until(lambda: time.monotonic() - outage_started >= 10, timeout=15, what="a 10 s outage")
    cluster.local.start_apiserver()
    for i in range(3):
        status = cluster.wait_phase(f"through-outage-{i}", namespace, timeout=90)["status"]
        assert (status["phase"], status["output"]) == ("Succeeded", f"echo: outage {i}")
    # Watches resumed: a run created after the outage is picked up too.
    cluster.apply(harness.echo_run("after-outage", "back"), namespace)
    assert cluster.wait_phase("after-outage", namespace, timeout=60)["status"]["phase"] == "Succeeded"


async def _create_finished(kubeconfig: str, namespace: str, count: int) -> None:
    """Runs that finished long ago, written straight to the API server."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)

        async def one(i: int) -> None:
            name = f"done-{i}"
            await custom.create_namespaced_custom_object(
                "agentrun.dev", "v1alpha1", namespace, "agentruns", harness.echo_run(name, "old")
            )
            await custom.patch_namespaced_custom_object_status(
                "agentrun.dev",
                "v1alpha1",
                namespace,
                "agentruns",
                name,
                {"status": manifests.finished_status()},
                _content_type="application/merge-patch+json",
            )

        for start in range(0, count, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))


def test_restart_over_many_finished_runs_writes_nothing_to_them(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    if cluster.local is None:
        pytest.skip("counting writes at the API server needs the local control plane's audit log")
    asyncio.run(_create_finished(str(cluster.kubeconfig), namespace, 500))
    start_operator(namespace)
    # A sentinel created after start-up is seen after the initial listing of the 500.
    cluster.apply(harness.echo_run("sentinel", "after restart"), namespace)
    assert cluster.wait_phase("sentinel", namespace)["status"]["phase"] == "Succeeded"
    writes = harness.wait_until(
        lambda: (lambda w: w if len(w) >= 4 else None)(cluster.operator_writes(namespace)),
        what="the sentinel's writes in the audit log",
    )
    touched = collections.Counter(w.name for w in writes)
    assert set(touched) == {"sentinel"}, f"writes to finished runs: {touched}"
    assert [(w.verb, w.subresource) for w in writes] == [
        ("patch", ""),  # finalizer added
        ("patch", "status"),  # Running
        ("patch", "status"),  # Succeeded
        ("patch", ""),  # finalizer released
    ]
