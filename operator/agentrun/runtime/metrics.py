"""Prometheus metrics of the operator, on a registry of its own.

Counters follow what happened to runs (started, finished by phase and reason,
model tokens, failed status writes); gauges say what is happening now (active and
queued runs). Served by :func:`serve` on ``/metrics``.
"""

from __future__ import annotations

import prometheus_client

from agentrun.api import models

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The operator's metrics. One instance per process (tests make their own)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.runs_started = prometheus_client.Counter(
            "agentrun_runs_started", "Runs admitted and started by this operator.", registry=self.registry
        )
        self.runs_finished = prometheus_client.Counter(
            "agentrun_runs_finished",
            "Runs whose terminal status this operator recorded, by phase and reason.",
            ["phase", "reason"],
            registry=self.registry,
        )
        self.run_duration = prometheus_client.Histogram(
            "agentrun_run_duration_seconds",
            "Time from admission to the recorded terminal status, by phase.",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.active_runs = prometheus_client.Gauge(
            "agentrun_active_runs", "Runs this operator is executing now.", registry=self.registry
        )
        self.queued_runs = prometheus_client.Gauge(
            "agentrun_queued_runs", "Runs waiting for a slot under the concurrency cap.", registry=self.registry
        )
        self.status_write_failures = prometheus_client.Counter(
            "agentrun_status_write_failures",
            "Writes to the API server that failed and were retried or abandoned, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.model_tokens = prometheus_client.Counter(
            "agentrun_model_tokens",
            "Model tokens used by finished runs, by direction.",
            ["direction"],
            registry=self.registry,
        )
        self.model_requests = prometheus_client.Counter(
            "agentrun_model_requests", "Model requests made by finished runs.", registry=self.registry
        )
        self.retries = prometheus_client.Counter(
            "agentrun_retries",
            "Failed attempts scheduled to be tried again, by the reason they failed.",
            ["reason"],
            registry=self.registry,
        )
        self.ttl_deletions = prometheus_client.Counter(
            "agentrun_ttl_deletions",
            "Finished runs deleted because their time to live after finishing passed.",
            registry=self.registry,
        )

    def finished(self, phase: models.Phase, reason: str, seconds: float | None, usage: models.Usage | None) -> None:
        self.runs_finished.labels(phase=phase.value, reason=reason).inc()
        if seconds is not None:
            self.run_duration.labels(phase=phase.value).observe(max(0.0, seconds))
        if usage is not None:
            self.model_tokens.labels(direction="input").inc(usage.input_tokens)
            self.model_tokens.labels(direction="output").inc(usage.output_tokens)
            self.model_requests.inc(usage.requests)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def serve(metrics: Metrics, port: int) -> None:
    """Serve ``/metrics`` on ``port`` from a daemon thread."""
    prometheus_client.start_http_server(port, registry=metrics.registry)
