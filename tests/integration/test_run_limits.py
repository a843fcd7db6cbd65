"""Budgets and limits: offloaded output, deadlines, the concurrency cap, many runs at once."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import pytest
from kubernetes_asyncio import client, config

import harness

pytestmark = pytest.mark.integration


def test_output_over_the_status_budget_is_offloaded_to_an_owned_secret(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, status_budget_bytes=4096)
    prompt = "incident " * 600  # the echo answer is ~5.4 KB: over half the budget
    cluster.apply(harness.echo_run("big", prompt), namespace)
    body = cluster.wait_phase("big", namespace)
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert "output" not in status
    ref = status["outputRef"]
    assert ref["kind"] == "Secret"
    assert status["events"][-1]["data"]["outputRef"] == ref
    secret = cluster.get("secret", ref["name"], namespace)
    assert secret is not None
    stored = json.loads(base64.b64decode(secret["data"][ref["key"]]))
    assert stored == f"echo: {prompt}"
    assert ref["sizeBytes"] == len(json.dumps(stored, separators=(",", ":")).encode())
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("AgentRun", "big", body["metadata"]["uid"])
    assert secret["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "agentrun-operator",
        "agentrun.dev/run": "big",
        "agentrun.dev/run-uid": body["metadata"]["uid"],
    }
    # The snapshot (history with the long prompt twice) went the same way.
    assert "sessionSnapshot" not in status
    assert status["sessionSnapshotRef"]["name"] != ref["name"]


def test_timeout_ends_with_deadline_exceeded(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.echo_run("slow", "wait", delay=30, timeoutSeconds=1), namespace)
    status = cluster.wait_phase("slow", namespace, timeout=20)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert status["message"] == "run exceeded its deadline of 1 seconds"
    assert [e["type"] for e in status["events"]] == ["run_started", "model_request", "run_failed"]


def test_runs_over_the_concurrency_cap_wait_queued_then_run(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    start_operator(namespace, max_concurrent_runs=1)
    cluster.apply(harness.echo_run("first", "one", delay=3), namespace)
    cluster.wait_phase("first", namespace, "Running")
    cluster.apply(harness.echo_run("second", "two"), namespace)

    def queued() -> dict[str, object] | None:
        status = cluster.run_status("second", namespace)
        return status if status.get("reason") == "Queued" else None

    status = harness.wait_until(queued, what="the second run to be Queued")
    assert status["phase"] == "Pending"
    assert status["conditions"][0]["status"] == "Unknown"
    assert cluster.run_status("first", namespace)["phase"] == "Running"
    first = cluster.wait_phase("first", namespace)["status"]
    second = cluster.wait_phase("second", namespace)["status"]
    assert first["phase"] == second["phase"] == "Succeeded"
    assert second["startTime"] >= first["completionTime"]


async def _create_runs(kubeconfig: str, namespace: str, count: int) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)
        await asyncio.gather(
            *(
                custom.create_namespaced_custom_object(
                    "agentrun.dev",
                    "v1alpha1",
                    namespace,
                    "agentruns",
                    harness.echo_run(f"burst-{i}", f"request number {i}", delay=0.5),
                )
                for i in range(count)
            )
        )


def test_fifty_concurrent_runs_do_not_interfere(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    asyncio.run(_create_runs(str(cluster.kubeconfig), namespace, 50))

    def all_done() -> list[dict[str, object]] | None:
        items = json.loads(cluster.kubectl("get", "ar", "-n", namespace, "-o", "json").stdout)["items"]
        finished = [i for i in items if (i.get("status") or {}).get("phase") in harness.TERMINAL]
        return items if len(finished) == 50 else None

    items = harness.wait_until(all_done, timeout=120, what="50 runs to finish")
    for item in items:
        status = item["status"]
        index = item["metadata"]["name"].removeprefix("burst-")
        assert status["phase"] == "Succeeded", status
        assert status["output"] == f"echo: request number {index}"  # each run got its own answer
        ids = [event["id"] for event in status["events"]]
        assert ids == sorted(set(ids))
        assert ids[0] == 1
        assert status["eventCount"] == ids[-1]
        assert [e["type"] for e in status["events"]].count("run_succeeded") == 1
        cluster.wait_released(item["metadata"]["name"], namespace)
