"""Agents on a real API server: defined once, named by runs, overridden by layer, frozen at admission."""

from __future__ import annotations

import json
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.integration


def agent(name: str, *, prompt: str = "Summarize the incident.", delay: float = 0.0, **defaults: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "description": "An SRE assistant on the offline echo model.",
            "composition": {
                "layers": [
                    {"name": "llm", "type": "model.echo", "config": {"delaySeconds": delay} if delay else {}},
                    {"name": "prompt", "type": "plain.prompt", "config": {"prefix": "Be brief.", "user": prompt}},
                ]
            },
            "defaults": defaults,
        },
    }


def run_of(name: str, agent_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {"agentRef": {"name": agent_name}, **spec},
    }


def test_a_run_uses_an_agent_with_its_own_layer_overrides(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(agent("sre", timeoutSeconds=30), namespace)
    cluster.apply(run_of("plain", "sre"), namespace)
    prompt = {"name": "prompt", "type": "plain.prompt", "config": {"user": "What broke last night?"}}
    cluster.apply(run_of("custom", "sre", composition={"layers": [prompt]}), namespace)

    plain = cluster.wait_phase("plain", namespace)["status"]
    custom = cluster.wait_phase("custom", namespace)["status"]

    assert (plain["phase"], plain["output"]) == ("Succeeded", "echo: Summarize the incident.")
    assert (custom["phase"], custom["output"]) == ("Succeeded", "echo: What broke last night?")
    assert custom["agent"]["name"] == "sre"
    assert custom["agent"]["generation"] == 1
    assert custom["agent"]["spec"]["defaults"] == {"timeoutSeconds": 30}
    listed = cluster.kubectl("get", "agents", "-n", namespace).stdout.splitlines()
    assert listed[0].split() == ["NAME", "TYPE", "MODEL", "AGE"]
    assert listed[1].split()[:2] == ["sre", "model.echo"]
    everything = cluster.kubectl("get", "agentrun-all", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(everything) == [
        "agent.agentrun.dev/sre",
        "agentrun.agentrun.dev/custom",
        "agentrun.agentrun.dev/plain",
    ]


def test_an_agent_edited_mid_run_changes_nothing_for_that_run(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(agent("slow", prompt="first version", delay=3), namespace)
    cluster.apply(run_of("admitted", "slow"), namespace)
    cluster.wait_phase("admitted", namespace, "Running")
    cluster.apply(agent("slow", prompt="second version"), namespace)
    cluster.apply(run_of("later", "slow"), namespace)

    admitted = cluster.wait_phase("admitted", namespace)["status"]
    later = cluster.wait_phase("later", namespace)["status"]

    assert (admitted["output"], admitted["agent"]["generation"]) == ("echo: first version", 1)
    assert (later["output"], later["agent"]["generation"]) == ("echo: second version", 2)


def test_a_missing_agent_fails_the_run_with_a_clear_message(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(run_of("orphaned", "nobody"), namespace)
    status = cluster.wait_phase("orphaned", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRequest")
    assert status["message"].startswith(f"Agent 'nobody' was not found in namespace '{namespace}'")
    assert [e["type"] for e in status["events"]] == ["run_started", "run_failed"]


def test_a_run_needs_a_composition_or_an_agent(cluster: harness.Cluster, namespace: str) -> None:
    empty = {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": "e"}, "spec": {}}
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(empty), check=False)
    assert refused.returncode != 0
    assert "set spec.composition, or spec.agentRef to run an Agent" in refused.stderr
