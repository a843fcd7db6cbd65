"""AgentRun manifests and statuses that the tests and the benchmarks build on."""

from __future__ import annotations

from typing import Any

LONG_AGO = "2026-01-01T00:00:00.000000Z"


def agent_run(name: str, layers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """An AgentRun manifest."""
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {"composition": {"layers": layers}, **spec},
    }


def echo_run(name: str, prompt: str | list[str] = "hello", *, delay: float = 0.0, **spec: Any) -> dict[str, Any]:
    """An AgentRun on the offline echo model."""
    return agent_run(
        name,
        [
            {"name": "llm", "type": "model.echo", "config": {"delaySeconds": delay} if delay else {}},
            {"name": "prompt", "type": "plain.prompt", "config": {"user": prompt}},
        ],
        **spec,
    )


def finished_status(output: str = "echo: old", when: str = LONG_AGO) -> dict[str, Any]:
    """The status of a run that succeeded long ago, as the operator would have left it."""
    return {
        "phase": "Succeeded",
        "reason": "Succeeded",
        "output": output,
        "startTime": when,
        "completionTime": when,
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "lastTransitionTime": when}],
        "events": [{"id": 1, "type": "run_started", "time": when}, {"id": 2, "type": "run_succeeded", "time": when}],
        "eventCount": 2,
    }
