"""`make bench`: the operator against a floor, a naive baseline and main, on a real API server.

Every scenario runs on the same throwaway control plane (etcd + kube-apiserver on
loopback) in one invocation, so the ratios compare like with like on a shared, noisy
machine. Headline figures are the median of interleaved trials (floor, operator,
floor, operator, ...) with their spread; each target of issue 14 is judged on the
median. Writes are counted by the API server (its audit log, filtered to the identity
of the process under test), not by the operator's own word.

Results go to ``bench/results/latest.json`` (``quick.json`` with ``--quick``); a table
is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from typing import Any

from kubernetes_asyncio import client, config

import failover
import harness
import localcluster
import observe
import report
import trials

RESULTS = harness.ROOT / "bench" / "results"
SCENARIOS = ("low_load", "burst", "naive", "concurrency", "heartbeat", "restart", "memory", "failover", "expiry")
BURST_FIGURES = (
    "runs_per_second",
    "wall_seconds",
    "create_to_running.p50_ms",
    "create_to_running.p95_ms",
    "create_to_succeeded.p50_ms",
    "create_to_succeeded.p95_ms",
    "writes_per_run",
    "refused_writes_per_run",
    "operator_rss_peak_mb",
    "cpu_ms_per_run",
)
# main as it was before issue 14's changes: its target is "low-load latency no worse than
# today's main", which a moving `main` stops meaning once those changes land on it.
BASELINE = "23d2e88e73006182267204ee4e4c5fc206cd3bbf"
LOW_LOAD_FIGURES = ("create_to_running.p50_ms", "create_to_succeeded.p50_ms", "create_to_succeeded.p95_ms")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How big and how often each scenario runs: the full benchmark, or ``--quick``."""

    burst_sizes: tuple[int, ...]
    trials: int
    low_load_runs: int
    concurrency: tuple[int, float, int]  # runs, delay, cap: two waves, ideally 2 x delay
    heartbeat_seconds: float
    finished_runs: int  # restart and memory scenarios
    active_runs: int
    failover_trials: int
    failover_in_flight: int
    expired_runs: int

    @property
    def headline_sizes(self) -> tuple[int, ...]:
        """The bursts the throughput target is about: all but the smallest, which fits under the cap."""
        return self.burst_sizes[1:]

    @property
    def naive_size(self) -> int:
        return self.burst_sizes[min(1, len(self.burst_sizes) - 1)]


FULL = Plan((100, 1000, 5000), 3, 50, (200, 2.0, 100), 60.0, 10_000, 100, 5, 20, 2000)
QUICK = Plan((50, 200), 3, 20, (40, 2.0, 20), 20.0, 1000, 100, 2, 10, 200)


def summarised(results: list[dict[str, Any]], figures: tuple[str, ...]) -> dict[str, Any]:
    return {"trials": results, "summary": trials.summarise(results, figures)}


async def step(name: str, coroutine: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """One scenario or trial; a failure is recorded in its place so the others still run."""
    print(f"bench: {name} ...", flush=True)
    try:
        result = await coroutine
    except Exception as error:  # any failure of the scenario: the report says it was not measured, and why
        result = {"error": f"{type(error).__name__}: {error}"[:2000]}
    print(f"bench: {name}: {json.dumps(result)}", flush=True)
    return result


async def interleaved_bursts(bench: harness.Bench, size: int, count: int) -> dict[str, Any]:
    """Floor then operator, ``count`` times over, so both sides see the same minutes of noise."""
    floors: list[dict[str, Any]] = []
    operators: list[dict[str, Any]] = []
    for trial in range(count):
        floors.append(await step(f"floor {size} (trial {trial + 1}/{count})", bench.floor(size)))
        operators.append(
            await step(
                f"operator {size} (trial {trial + 1}/{count})",
                bench.burst(
                    "operator",
                    size,
                    lambda ns: bench.operator(ns, max_concurrent_runs=100),
                    localcluster.OPERATOR_USER,
                ),
            )
        )
    ratios = trials.paired_ratios(operators, floors, "runs_per_second")
    return {
        "floor": summarised(floors, BURST_FIGURES),
        "operator": summarised(operators, BURST_FIGURES),
        "ratio_vs_floor": {"trials": [round(r, 3) for r in ratios], **trials.spread(ratios)},
    }


def extract_baseline(ref: str, workdir: pathlib.Path) -> tuple[pathlib.Path, str] | str:
    """The operator source of ``ref`` in a directory, with its commit; or why it could not be had."""
    commit = subprocess.run(
        ["git", "-C", str(harness.ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        return f"no commit {ref!r} in this repository"
    target = workdir / "baseline"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(harness.ROOT), "archive", commit.stdout.strip(), "operator"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target, commit.stdout.strip()


async def low_load_against_baseline(
    bench: harness.Bench, plan: Plan, baseline: tuple[pathlib.Path, str] | str, ref: str
) -> dict[str, Any]:
    """Low-load latency of this tree and of the baseline (main), interleaved trial by trial."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for trial in range(plan.trials):
        label = f"(trial {trial + 1}/{plan.trials})"
        if not isinstance(baseline, str):
            theirs.append(await step(f"low load, {ref} {label}", bench.low_load(plan.low_load_runs, baseline[0])))
        ours.append(await step(f"low load {label}", bench.low_load(plan.low_load_runs)))
    result: dict[str, Any] = {"operator": summarised(ours, LOW_LOAD_FIGURES)}
    if isinstance(baseline, str):
        result["baseline"] = {"ref": ref, "skipped": baseline}
    elif all("error" in trial for trial in theirs):
        result["baseline"] = {"ref": ref, "commit": baseline[1], "error": theirs[0]["error"]}
    else:
        result["baseline"] = {"ref": ref, "commit": baseline[1], **summarised(theirs, LOW_LOAD_FIGURES)}
    return result


async def memory(bench: harness.Bench, plan: Plan, finished_namespace: str, seed_seconds: float) -> dict[str, Any]:
    """RSS with the same active load over no finished runs, then over many (same settings)."""
    empty = await bench.namespace("memory-0")
    delay = 15.0  # long enough that all active runs are Running at once while RSS is sampled
    without = await step("memory, 0 finished", bench.memory(empty, 0, plan.active_runs, delay))
    with_finished = await step(
        f"memory, {plan.finished_runs} finished",
        bench.memory(finished_namespace, plan.finished_runs, plan.active_runs, delay),
    )
    return {"without_finished": without, "with_finished": with_finished, "seed_seconds": seed_seconds}


async def naive_against_floor(bench: harness.Bench, plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    """One burst of the naive kopf operator, set against the median floor of the same size."""
    naive = await step(
        f"naive kopf operator {plan.naive_size}",
        bench.burst("naive", plan.naive_size, lambda ns: harness.naive_operator(bench, ns), localcluster.OPERATOR_USER),
    )
    floor = (results.get("burst") or {}).get(str(plan.naive_size), {}).get("floor")
    floor_median = floor["summary"]["runs_per_second"]["median"] if floor else None
    if "error" not in naive and floor_median:
        naive["ratio_vs_floor_median"] = round(naive["runs_per_second"] / floor_median, 3)
    return naive


async def nothing() -> None:
    return None


async def main_async(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    selected = set(args.only.split(",")) if args.only else set(SCENARIOS)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="agentrun-bench-"))
    with localcluster.running(workdir / "cluster", audit=True) as cluster:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = harness.CREATE_CONCURRENCY
        async with client.ApiClient(configuration) as api:
            audit = observe.AuditLog(cluster.audit_log, (localcluster.OPERATOR_USER,))
            bench = harness.Bench(cluster, workdir, api, client.CustomObjectsApi(api), audit)
            harness.grant_leases(cluster)
            results: dict[str, Any] = {
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg(),
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                    "kube_apiserver": cluster.version(),
                },
                "settings": {
                    **dataclasses.asdict(plan),
                    "headline_sizes": plan.headline_sizes,
                    "under_cap_size": plan.burst_sizes[0],
                    "scenarios": [name for name in SCENARIOS if name in selected],
                },
            }
            await bench.floor(20)  # warm up the API server and the connection pool
            if "low_load" in selected:
                baseline = extract_baseline(args.baseline, workdir) if args.baseline else "not asked for"
                results["low_load"] = await low_load_against_baseline(bench, plan, baseline, args.baseline)
            if "burst" in selected:
                results["burst"] = {
                    str(size): await interleaved_bursts(bench, size, plan.trials) for size in plan.burst_sizes
                }
            if "naive" in selected:
                results["naive"] = {str(plan.naive_size): await naive_against_floor(bench, plan, results)}
            if "concurrency" in selected:
                results["concurrency"] = await step("concurrency", bench.concurrency(*plan.concurrency))
            # The heartbeat run counts writes, which the API server's load does not change: the
            # finished runs for restart and memory (one namespace serves both) are seeded meanwhile.
            finished = await bench.namespace(f"finished-{plan.finished_runs}")
            needs_finished = bool(selected & {"restart", "memory"})
            if needs_finished:
                print(f"bench: seeding {plan.finished_runs} finished runs ...", flush=True)
            heartbeat, seed_seconds = await asyncio.gather(
                step("heartbeat", bench.heartbeat(plan.heartbeat_seconds)) if "heartbeat" in selected else nothing(),
                bench.seed_finished(finished, plan.finished_runs) if needs_finished else nothing(),
            )
            if heartbeat is not None:
                results["heartbeat"] = heartbeat
            if needs_finished:
                if "restart" in selected:
                    results["restart"] = await step("restart", bench.restart(finished, plan.finished_runs))
                if "memory" in selected:
                    results["memory"] = await memory(bench, plan, finished, seed_seconds)
            if "failover" in selected:
                results["failover"] = await step(
                    "failover", failover.failover(bench, plan.failover_trials, plan.failover_in_flight)
                )
            if "expiry" in selected:
                results["expiry"] = await step("expiry", bench.expiry(plan.expired_runs, 20))
    results["targets"] = report.targets(results)
    return results


def pod_mode_on_a_node(runs: int) -> dict[str, Any]:
    """bench/pod_mode.py on a cluster of its own with a real node, after the shared control plane is gone."""
    print(f"bench: pod mode ({runs} runs, on a real node) ...", flush=True)
    try:
        import pod_mode  # here: it brings the node tier's modules, which only this scenario needs

        with tempfile.TemporaryDirectory(prefix="agentrun-bench-pods-") as workdir:
            result = pod_mode.measure(pathlib.Path(workdir), runs)
    except Exception as error:  # any failure of the scenario: recorded in its place, as step() does
        result = {"error": f"{type(error).__name__}: {error}"[:2000]}
    print(f"bench: pod mode: {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check of a few minutes")
    parser.add_argument("--trials", type=int, default=None, help="interleaved trials per burst size (default 3)")
    parser.add_argument(
        "--sizes",
        default="",
        help="comma-separated burst sizes instead of the plan's (the first should fit under the cap of 100)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run (default all): {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--pod-mode",
        type=int,
        default=0,
        metavar="RUNS",
        help="also run pod_mode.py's pod-mode benchmark with RUNS runs, on a real node (root; one node per machine)",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"git ref whose operator the low-load latency is compared with (default {BASELINE[:9]}; '' skips)",
    )
    args = parser.parse_args()
    unknown = set(filter(None, args.only.split(","))) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    if args.trials is not None:
        plan = dataclasses.replace(plan, trials=args.trials)
    if args.sizes:
        plan = dataclasses.replace(plan, burst_sizes=tuple(int(size) for size in args.sizes.split(",")))
    began = time.monotonic()
    results = asyncio.run(main_async(args, plan))
    if args.pod_mode:
        results["pod_mode"] = pod_mode_on_a_node(args.pod_mode)
    results["seconds"] = round(time.monotonic() - began, 1)
    results["quick"] = args.quick
    results["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else "latest.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    print(f"\nresults: {RESULTS / name} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
