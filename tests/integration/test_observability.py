"""What an operator of the operator sees: Prometheus metrics, health, structured logs."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import harness

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_what_happened(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    port = harness.free_port()
    start_operator(namespace, metrics_port=port, max_concurrent_runs=1)
    cluster.apply(harness.echo_run("m-slow", "one two three", delay=2), namespace)
    cluster.wait_phase("m-slow", namespace, "Running")
    cluster.apply(harness.echo_run("m-queued", "four"), namespace)
    harness.wait_until(
        lambda: cluster.run_status("m-queued", namespace).get("reason") == "Queued", what="the second run to queue"
    )
    during = scrape(port)
    assert during[("agentrun_active_runs", ())] == 1
    assert during[("agentrun_queued_runs", ())] == 1

    cluster.apply(harness.echo_run("m-blank", [" "]), namespace)
    for name in ("m-slow", "m-queued", "m-blank"):
        cluster.wait_phase(name, namespace)
    after = harness.wait_until(
        lambda: (lambda s: s if s.get(("agentrun_runs_started_total", ())) == 3 else None)(scrape(port)),
        what="three started runs in the metrics",
    )
    assert after[("agentrun_runs_finished_total", (("phase", "Succeeded"), ("reason", "Succeeded")))] == 2
    assert after[("agentrun_runs_finished_total", (("phase", "Failed"), ("reason", "InvalidRequest")))] == 1
    assert after[("agentrun_run_duration_seconds_count", (("phase", "Succeeded"),))] == 2
    assert after[("agentrun_run_duration_seconds_sum", (("phase", "Succeeded"),))] >= 2.0  # the 2 s run
    assert after[("agentrun_active_runs", ())] == 0
    assert after[("agentrun_queued_runs", ())] == 0
    assert after[("agentrun_model_requests_total", ())] == 2
    # The echo model counts words: "one two three" + "four" in, "echo: ..." out.
    assert after[("agentrun_model_tokens_total", (("direction", "input"),))] == 4
    assert after[("agentrun_model_tokens_total", (("direction", "output"),))] == 4 + 2


def test_health_endpoint_and_json_logs(
    cluster: harness.Cluster, namespace: str, start_operator: Callable[..., harness.OperatorProcess]
) -> None:
    operator = start_operator(namespace, log_format="json")
    assert operator.probe("/healthz") == {"status": "ok"}
    assert operator.probe("/readyz") == {"ready": True, "leading": True, "active": 0, "queued": 0}
    cluster.apply(harness.echo_run("logged", "hi"), namespace)
    cluster.wait_phase("logged", namespace)
    lines = [line for line in operator.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all("message" in record and "severity" in record for record in records)
