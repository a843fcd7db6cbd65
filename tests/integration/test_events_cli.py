"""`agentrun events` and `kubectl agentrun events`: follow a run, exit with how it ended."""

from __future__ import annotations

import subprocess

import pytest

import harness

pytestmark = pytest.mark.integration


def test_follow_prints_events_as_they_arrive_and_exits_when_the_run_ends(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.echo_run("followed", "hi there", delay=2), namespace)
    cluster.wait_phase("followed", namespace, "Running")
    follower = subprocess.Popen(
        [str(harness.AGENTRUN), "events", "followed", "-n", namespace, "--follow"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "TYPE", "DETAIL"]
    types = [line.split()[2] for line in lines[1:]]
    assert types == ["run_started", "model_request", "run_succeeded"]
    assert "output=echo: hi there" in lines[-1]
    assert cluster.run_status("followed", namespace)["phase"] == "Succeeded"


def test_kubectl_plugin_reports_failure_by_exit_code(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(harness.example("invalid-blank-prompt.yaml"), namespace)
    cluster.wait_phase("blank-prompt", namespace)
    result = cluster.kubectl("agentrun", "events", "blank-prompt", "-n", namespace, "-o", "json", check=False)
    assert result.returncode == 1, result.stderr
    assert '"type":"run_failed"' in result.stdout
    assert "run.user_prompts must not be empty" in result.stdout


def test_missing_run_and_unfinished_run_exit_codes(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    missing = cluster.kubectl("agentrun", "events", "nope", "-n", namespace, check=False)
    assert missing.returncode == 5
    assert f"AgentRun {namespace}/nope not found" in missing.stderr
    cluster.apply(harness.echo_run("long", "later", delay=30), namespace)
    cluster.wait_phase("long", namespace, "Running")
    unfinished = cluster.kubectl("agentrun", "events", "long", "-n", namespace, check=False)
    assert unfinished.returncode == 4
    assert "run_started" in unfinished.stdout
