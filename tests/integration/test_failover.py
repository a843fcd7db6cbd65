"""Failover between operator replicas on a real API server: one leader, standbys, no run lost or run twice.

Every operator here elects on the Lease ``agentrun-operator`` in the test's namespace,
with the short test timing (``harness.TEST_LEASE``).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.integration

LEASE = "agentrun-operator"
RETRY_HANDOVERS = {"limit": 6, "backoffSeconds": 0.5, "retryOn": ["OperatorRestarted"]}
FAKETIME_LIBRARY = pathlib.Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.fixture
def replicas(
    cluster: harness.Cluster, namespace: str, tmp_path: pathlib.Path
) -> Iterator[Callable[..., harness.OperatorProcess]]:
    """Start operator replicas for the namespace (extra environment allowed); all are stopped afterwards."""
    started: list[harness.OperatorProcess] = []

    def start(
        *, env: dict[str, str] | None = None, wait_ready: bool = True, **settings: Any
    ) -> harness.OperatorProcess:
        process = harness.OperatorProcess(cluster, [namespace], tmp_path, **settings)
        process.env.update(env or {})
        started.append(process)
        return process.start(wait_ready=wait_ready)

    yield start
    for process in started:
        process.stop()


def holder(cluster: harness.Cluster, namespace: str) -> str | None:
    lease = cluster.get("lease", LEASE, namespace)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def wait_leading(cluster: harness.Cluster, namespace: str, process: harness.OperatorProcess) -> None:
    harness.wait_until(
        lambda: holder(cluster, namespace) == process.instance and (process.probe("/readyz") or {}).get("leading"),
        timeout=60,
        what=f"{process.instance} to lead",
    )


def runs(cluster: harness.Cluster, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", "ar", "-n", namespace, "-o", "json").stdout)["items"])


def phase_counts(items: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter((item.get("status") or {}).get("phase", "Pending") for item in items)


def terminal_event_count(status: dict[str, Any]) -> int:
    return sum(1 for event in status.get("events") or [] if event["type"] in ("run_succeeded", "run_failed"))


def test_killing_the_leader_five_times_loses_no_run_and_runs_none_twice(
    cluster: harness.Cluster, namespace: str, replicas: Callable[..., harness.OperatorProcess]
) -> None:
    total, kills = 500, 5
    leader = replicas()
    wait_leading(cluster, namespace, leader)
    standby = replicas()
    manifests = [
        harness.echo_run(f"fo-{i}", f"request {i}", delay=(i % 4) * 0.25, retry=RETRY_HANDOVERS) for i in range(total)
    ]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin="\n---\n".join(json.dumps(m) for m in manifests))

    shuffle = random.Random(20261123)
    killed: list[str] = []
    for round_number in range(kills):
        # Kill at a random point of this round's share of the work.
        goal = int(total * (round_number + shuffle.uniform(0.2, 0.9)) / (kills + 1))
        harness.wait_until(
            lambda goal=goal: phase_counts(runs(cluster, namespace))["Succeeded"] >= goal,  # type: ignore[misc]
            timeout=180,
            what=f"{goal} runs to succeed before kill {round_number + 1}",
        )
        leader.kill()
        killed.append(leader.instance)
        leader, standby = standby, replicas()  # a replacement joins as the next standby
        wait_leading(cluster, namespace, leader)

    items = harness.wait_until(
        lambda: (lambda found: found if phase_counts(found)["Succeeded"] == total else None)(runs(cluster, namespace)),
        timeout=300,
        what="every run to succeed",
    )
    retried = 0
    for item in items:
        status = item["status"]
        assert terminal_event_count(status) == 1, status["events"]
        attempts = status["attempts"]
        # Only a handover ends an attempt early, and only the last attempt produced the output.
        assert [a["reason"] for a in attempts[:-1]] == ["OperatorRestarted"] * (len(attempts) - 1), attempts
        assert attempts[-1]["reason"] == "Succeeded"
        assert all(a["instance"] in killed for a in attempts[:-1])
        retried += len(attempts) > 1
        assert status["output"] == f"echo: request {item['metadata']['name'].removeprefix('fo-')}"
    print(f"\nfailover: {total} runs, {kills} leader kills, {retried} runs retried after a handover")


def test_a_leader_whose_lease_is_deleted_stops_before_another_instance_leads(
    cluster: harness.Cluster, namespace: str, replicas: Callable[..., harness.OperatorProcess]
) -> None:
    leader = replicas()
    wait_leading(cluster, namespace, leader)
    standby = replicas()
    cluster.apply(harness.echo_run("long", "slow", delay=120), namespace)
    cluster.wait_phase("long", namespace, "Running")

    cluster.kubectl("delete", "lease", LEASE, "-n", namespace)

    def new_holder() -> str | None:
        found = holder(cluster, namespace)
        if found is not None:
            # At the first sight of a new holder the old leader must already have stopped.
            assert leader.process is not None
            assert leader.process.poll() is not None, "a second instance leads while the first still runs"
        return found

    assert harness.wait_until(new_holder, timeout=60, interval=0.05, what="a new Lease holder") == standby.instance
    assert leader.process is not None
    assert leader.process.returncode == 3  # exited on the spot, without a drain
    assert "leadership lost" in leader.logs()
    status = cluster.wait_phase("long", namespace, timeout=60)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "OperatorRestarted")
    assert terminal_event_count(status) == 1


def faketime_environment(offset: str) -> dict[str, str]:
    """Run a process with its wall clock moved by ``offset`` (libfaketime); monotonic time is left alone."""
    if not FAKETIME_LIBRARY.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FAKETIME_LIBRARY} is missing: CI installs the Debian package faketime")
        pytest.skip("needs the Debian package faketime (apt-get install faketime)")
    return {"LD_PRELOAD": str(FAKETIME_LIBRARY), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_instances_whose_clocks_differ_by_five_minutes_do_not_fail_each_others_runs(
    cluster: harness.Cluster, namespace: str, replicas: Callable[..., harness.OperatorProcess]
) -> None:
    leader = replicas()
    wait_leading(cluster, namespace, leader)
    ahead = replicas(env=faketime_environment("+5m"))
    skewed = subprocess.run(
        ["date", "+%s"], env={**os.environ, **faketime_environment("+5m")}, capture_output=True, text=True, check=True
    )
    assert int(skewed.stdout) - time.time() > 290  # the standby's clock really is five minutes ahead

    names = [f"skew-{i}" for i in range(3)]
    for name in names:
        cluster.apply(harness.echo_run(name, name, delay=2 * harness.TEST_LEASE["lease_duration_seconds"]), namespace)
    for name in names:
        status = cluster.wait_phase(name, namespace, timeout=90)["status"]
        # Executed once, by the leader, although the standby's clock says its renewals are five minutes old.
        assert (status["phase"], status["runner"]["instance"]) == ("Succeeded", leader.instance)
        assert [a["instance"] for a in status["attempts"]] == [leader.instance]
    assert holder(cluster, namespace) == leader.instance

    leader.stop()  # SIGTERM: drain, then release the Lease; the skewed standby leads at once
    wait_leading(cluster, namespace, ahead)
    cluster.apply(harness.echo_run("after", "after the handover"), namespace)
    status = cluster.wait_phase("after", namespace, timeout=60)["status"]
    assert (status["phase"], status["attempts"][0]["instance"]) == ("Succeeded", ahead.instance)


def test_sigterm_hands_the_lease_over_without_waiting_for_it_to_expire(
    cluster: harness.Cluster, namespace: str, replicas: Callable[..., harness.OperatorProcess]
) -> None:
    # A Lease far longer than the test: only the release lets the standby lead this soon.
    slow = {"lease_duration_seconds": 120, "lease_renew_deadline_seconds": 60}
    leader = replicas(**slow)
    wait_leading(cluster, namespace, leader)
    standby = replicas(**slow)
    stopped = time.monotonic()
    leader.stop()
    wait_leading(cluster, namespace, standby)
    assert time.monotonic() - stopped < 60
    cluster.apply(harness.echo_run("handed-over", "hello"), namespace)
    assert cluster.wait_phase("handed-over", namespace, timeout=60)["status"]["phase"] == "Succeeded"


def test_finished_runs_leave_the_operators_watch(
    cluster: harness.Cluster, namespace: str, replicas: Callable[..., harness.OperatorProcess]
) -> None:
    operator = replicas()
    for i in range(3):
        cluster.apply(harness.echo_run(f"done-{i}", "hello"), namespace)
    for i in range(3):
        cluster.wait_phase(f"done-{i}", namespace)
        cluster.wait_released(f"done-{i}", namespace)
    unfinished = cluster.kubectl("get", "ar", "-n", namespace, "-l", "!agentrun.dev/finished", "-o", "name").stdout
    assert unfinished.strip() == ""
    finished = cluster.kubectl("get", "ar", "-n", namespace, "-l", "agentrun.dev/finished=true", "-o", "name")
    assert sorted(finished.stdout.split()) == [f"agentrun.agentrun.dev/done-{i}" for i in range(3)]
    assert (operator.probe("/readyz") or {}).get("active") == 0
