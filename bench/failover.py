"""Failover: a standby takes over when the leader is SIGKILLed.

Two operator processes watch the same namespace and share one leader Lease. Each
trial puts runs in flight on the leader, SIGKILLs it, and at once creates a probe
run. The figure is the time from the kill to the probe's admission (``Running``,
owned by the standby). The in-flight runs must all end terminal (none lost) and none
may end twice (no duplicate terminal event). A new standby is then started, so the
next trial kills the new leader.

The operator's Lease settings are ``AGENTRUN_LEASE_*`` variables, left at their
defaults except the Lease's name and namespace. An operator without them (no
``--lease-name`` in ``agentrun operator --help``) cannot fail over: the scenario then
reports itself as not available instead of measuring two competing operators.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import harness
import observe
import processes

LEASE_NAME = "agentrun-bench-failover"
IN_FLIGHT_DELAY_SECONDS = 3.0
NOT_AVAILABLE = "not available in this build: `agentrun operator --help` has no --lease-name"


def supports_leases() -> bool:
    shown = subprocess.run([str(processes.AGENTRUN), "operator", "--help"], capture_output=True, text=True, check=False)
    return "--lease-name" in shown.stdout


def role(process: processes.OperatorProcess) -> str | None:
    """ "leader" or "standby" once /readyz says the process is ready as one; ``None`` before."""
    state = process.probe("/readyz")
    if not state or not state.get("ready") or "leading" not in state:
        return None
    return "leader" if state["leading"] else "standby"


async def start_instance(bench: harness.Bench, namespace: str, *, expect_leading: bool) -> processes.OperatorProcess:
    """An operator on the shared Lease, once its /readyz says it leads (or stands by)."""
    process = bench.operator_process(namespace, lease_name=LEASE_NAME, lease_namespace=namespace)
    process.start(wait_ready=False)

    def settled() -> bool:
        assert process.process is not None
        if process.process.poll() is not None:
            raise AssertionError(f"operator exited with {process.process.returncode}:\n{process.logs()[-3000:]}")
        return role(process) == expected

    expected = "leader" if expect_leading else "standby"
    ready_as = functools.partial(processes.wait_until, settled, timeout=90, what=f"an operator ready as {expected}")
    await asyncio.to_thread(ready_as)
    return process


@contextlib.contextmanager
def stopped_at_exit(instances: list[processes.OperatorProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in instances:
            process.stop()


async def trial(
    bench: harness.Bench,
    observer: observe.RunObserver,
    namespace: str,
    number: int,
    leader: processes.OperatorProcess,
    standby: processes.OperatorProcess,
    in_flight: int,
) -> dict[str, Any]:
    """Kill the leader with ``in_flight`` runs on it; time the standby's first admission."""
    names = [f"t{number}-r{i}" for i in range(in_flight)]
    runs = [harness.echo_run(name, IN_FLIGHT_DELAY_SECONDS) for name in names]
    for run in runs:  # the leader's runs end OperatorRestarted on takeover, and are retried once
        run["spec"]["retry"] = {"limit": 1, "backoffSeconds": 0.1}
    await bench.create_runs(namespace, runs)
    not_running = await observer.wait_for(names, ("Running", *observe.TERMINAL), limit=60)
    killed_at = time.time()
    leader.kill()
    probe = f"t{number}-probe"
    await bench.create_runs(namespace, [harness.echo_run(probe)])
    not_admitted = await observer.wait_for([probe], ("Running", *observe.TERMINAL), limit=120)
    admitted = observer.first(probe, "Running") or observer.latest(probe)
    lost = await observer.wait_for([*names, probe], observe.TERMINAL, limit=120)
    took = None
    if admitted is not None and not not_admitted:
        started = harness.parse_time(admitted.start_time) if admitted.start_time else admitted.seen
        took = round(started - killed_at, 2)
    return {
        "trial": number,
        "in_flight_at_kill": in_flight - len(not_running),
        "seconds_to_first_new_run_admitted": took,
        "admitted_by_standby": admitted is not None and admitted.instance == standby.instance,
        "lost_runs": len(lost),
        "in_flight_phases": dict(
            collections.Counter(str(s.phase) if (s := observer.latest(name)) else "unseen" for name in names)
        ),
    }


async def failover(bench: harness.Bench, trials: int, in_flight: int) -> dict[str, Any]:
    if not supports_leases():
        return {"skipped": NOT_AVAILABLE}
    namespace = await bench.namespace("failover")
    instances: list[processes.OperatorProcess] = []
    results = []
    async with observe.RunObserver(bench.custom, namespace) as observer:
        with stopped_at_exit(instances):
            instances.append(await start_instance(bench, namespace, expect_leading=True))
            instances.append(await start_instance(bench, namespace, expect_leading=False))
            for number in range(trials):
                leader, standby = instances[-2], instances[-1]
                results.append(await trial(bench, observer, namespace, number, leader, standby, in_flight))
                if results[-1]["seconds_to_first_new_run_admitted"] is None:
                    break  # no instance leads now: a further kill would measure nothing
                if number + 1 < trials:
                    instances.append(await start_instance(bench, namespace, expect_leading=False))
        names = list(observer.sightings)
        duplicates = {
            name: {"terminal_transitions": observer.terminal_transitions(name), "terminal_events": s.terminal_events}
            for name in names
            if (s := observer.latest(name)) is not None
            and (observer.terminal_transitions(name) > 1 or s.terminal_events > 1)
        }
    takeover = [r["seconds_to_first_new_run_admitted"] for r in results if r["seconds_to_first_new_run_admitted"]]
    return {
        "trials": results,
        "lease": "defaults (AGENTRUN_LEASE_DURATION_SECONDS etc. unset)",
        "in_flight_per_trial": in_flight,
        "seconds_to_first_new_run_admitted_p50": round(statistics.median(takeover), 2) if takeover else None,
        "seconds_to_first_new_run_admitted_max": max(takeover) if takeover else None,
        "trials_without_takeover": len(results) - len(takeover),
        "admitted_by_other_instance": sum(1 for r in results if not r["admitted_by_standby"]),
        "lost_runs": sum(r["lost_runs"] for r in results),
        "runs_with_duplicate_terminal_events": len(duplicates),
        "duplicates": duplicates,
    }
