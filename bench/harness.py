"""`make bench`: the operator against a floor and a naive baseline, on a real API server.

Every scenario runs on the same throwaway control plane (etcd + kube-apiserver on
loopback) in one invocation, so the ratios compare like with like on a shared,
noisy machine. Writes are counted by the API server (its audit log, filtered to
the identity of the process under test), not by the operator's own word.

Results go to ``bench/results/latest.json`` (and a timestamped copy); a table is
printed at the end. ``--quick`` runs small sizes for a smoke check.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
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
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from kubernetes_asyncio import client, config, watch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

import localcluster  # noqa: E402
import manifests  # noqa: E402
import processes  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GROUP, VERSION, PLURAL = "agentrun.dev", "v1alpha1", "agentruns"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CREATE_CONCURRENCY = 64


def echo_run(name: str, delay: float = 0.0) -> dict[str, Any]:
    return manifests.echo_run(name, f"benchmark {name}", delay=delay)


def parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(values: list[float]) -> dict[str, float | None]:
    return {f"p{int(q * 100)}_ms": _ms(percentile(values, q)) for q in (0.5, 0.95, 0.99)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class ProcessSampler:
    """RSS and CPU of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._task: asyncio.Task[None] | None = None

    def _status(self, field: str) -> int:
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        return self._status("VmRSS")

    def cpu_seconds(self) -> float:
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak_rss = max(self.peak_rss, self.rss())
            await asyncio.sleep(0.25)

    def __enter__(self) -> ProcessSampler:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


@dataclasses.dataclass
class Bench:
    cluster: localcluster.LocalCluster
    workdir: pathlib.Path
    api: client.ApiClient
    custom: client.CustomObjectsApi
    _namespaces: int = 0

    # --- cluster helpers -------------------------------------------------------------

    async def namespace(self, stem: str) -> str:
        """A fresh namespace (a scenario may run more than once, as the warm-up floor does)."""
        self._namespaces += 1
        name = f"{stem}-{self._namespaces}"
        await client.CoreV1Api(self.api).create_namespace({"metadata": {"name": name}})
        return name

    async def create_runs(self, namespace: str, manifests: list[dict[str, Any]]) -> dict[str, float]:
        """Create in a burst; returns the wall-clock time each create returned."""
        created: dict[str, float] = {}
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def one(manifest: dict[str, Any]) -> None:
            async with semaphore:
                await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
                created[manifest["metadata"]["name"]] = time.time()

        await asyncio.gather(*(one(m) for m in manifests))
        return created

    async def wait_all_terminal(self, namespace: str, count: int, limit: float) -> dict[str, dict[str, Any]]:
        """Watch the namespace until ``count`` runs are terminal; returns their final objects."""
        finished: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + limit
        resource_version = None
        while len(finished) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(finished)}/{count} runs terminal after {limit:.0f}s in {namespace}")
            if resource_version is None:
                listing = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                for item in listing["items"]:
                    if (item.get("status") or {}).get("phase") in TERMINAL:
                        finished[item["metadata"]["name"]] = item
                resource_version = listing["metadata"]["resourceVersion"]
                continue
            stream = watch.Watch()
            try:
                async with stream.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    resource_version=resource_version,
                    timeout_seconds=30,
                ) as events:
                    async for event in events:
                        item = event["object"]
                        resource_version = item["metadata"]["resourceVersion"]
                        if (item.get("status") or {}).get("phase") in TERMINAL:
                            finished[item["metadata"]["name"]] = item
                        if len(finished) >= count:
                            break
            except client.exceptions.ApiException as error:
                if error.status != 410:
                    raise
                resource_version = None  # expired: list again
        return finished

    def writes(self, namespace: str, username: str) -> collections.Counter[str]:
        """Writes by ``username`` in ``namespace``, keyed "verb resource[/subresource][ refused-code]"."""
        counts: collections.Counter[str] = collections.Counter()
        for entry in self.cluster.audit_events():
            ref = entry.get("objectRef") or {}
            if entry["user"]["username"] != username or ref.get("namespace") != namespace:
                continue
            if entry.get("stage") != "ResponseComplete":
                continue
            resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            code = entry["responseStatus"]["code"]
            counts[f"{entry['verb']} {resource}" + (f" {code}" if code >= 400 else "")] += 1
        return counts

    @contextlib.contextmanager
    def operator(self, namespace: str, **settings: Any) -> Iterator[processes.OperatorProcess]:
        process = processes.OperatorProcess(
            kubeconfig=self.cluster.operator_kubeconfig,
            namespaces=[namespace],
            log_dir=self.workdir,
            log_level="WARNING",
            **settings,
        )
        process.start()
        try:
            yield process
        finally:
            process.stop()

    # --- scenarios ---------------------------------------------------------------------

    async def burst(self, label: str, count: int, start: Callable[[str], Any], username: str) -> dict[str, Any]:
        """Create ``count`` zero-delay echo runs at once and measure until all are terminal."""
        namespace = await self.namespace(f"{label}-{count}")
        with start(namespace) as target:
            pid = target.process.pid if target is not None and target.process else None
            sampler = ProcessSampler(pid) if pid else None
            with sampler or contextlib.nullcontext():
                cpu_before = sampler.cpu_seconds() if sampler else 0.0
                began = time.time()
                created = await self.create_runs(namespace, [echo_run(f"r{i}") for i in range(count)])
                items = await self.wait_all_terminal(namespace, count, limit=600)
                wall = time.time() - began
                cpu = (sampler.cpu_seconds() - cpu_before) if sampler else None
                rss_end = sampler.rss() if sampler else None
        to_running = [
            parse_time(i["status"]["startTime"]) - created[n] for n, i in items.items() if "startTime" in i["status"]
        ]
        to_done = [parse_time(i["status"]["completionTime"]) - created[n] for n, i in items.items()]
        phases = collections.Counter(i["status"]["phase"] for i in items.values())
        writes = self.writes(namespace, username)
        run_writes = sum(v for k, v in writes.items() if k.split()[1].startswith("agentruns") and len(k.split()) == 2)
        refused = sum(v for k, v in writes.items() if len(k.split()) == 3)
        return {
            "runs": count,
            "phases": dict(phases),
            "wall_seconds": round(wall, 2),
            "runs_per_second": round(count / wall, 1),
            "create_to_running": latency_summary(to_running),
            "create_to_succeeded": latency_summary(to_done),
            "writes_per_run": round(run_writes / count, 2),
            "refused_writes_per_run": round(refused / count, 2),
            "writes_by_request": {k: round(v / count, 2) for k, v in sorted(writes.items())},
            "operator_rss_peak_mb": round(sampler.peak_rss / 2**20, 1) if sampler else None,
            "operator_rss_end_mb": round(rss_end / 2**20, 1) if rss_end else None,
            "cpu_ms_per_run": round(cpu / count * 1000, 2) if cpu is not None else None,
        }

    async def low_load(self, count: int) -> dict[str, Any]:
        """One run at a time: the latency a single request sees on an idle operator."""
        namespace = await self.namespace(f"low-load-{count}")
        to_running: list[float] = []
        to_done: list[float] = []
        with self.operator(namespace):
            for i in range(count):
                created = await self.create_runs(namespace, [echo_run(f"r{i}")])
                items = await self.wait_all_terminal(namespace, i + 1, limit=60)
                status = items[f"r{i}"]["status"]
                to_running.append(parse_time(status["startTime"]) - created[f"r{i}"])
                to_done.append(parse_time(status["completionTime"]) - created[f"r{i}"])
        return {
            "runs": count,
            "create_to_running": latency_summary(to_running),
            "create_to_succeeded": latency_summary(to_done),
        }

    async def floor(self, count: int) -> dict[str, Any]:
        """Only the writes a run strictly needs, from one asyncio client, as fast as accepted."""
        namespace = await self.namespace(f"floor-{count}")
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)
        merge = "application/merge-patch+json"

        async def one(i: int) -> float:
            name = f"r{i}"
            async with semaphore:
                began = time.time()
                body = await self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, echo_run(name)
                )
                rv = body["metadata"]["resourceVersion"]
                for patch, status in (
                    ({"metadata": {"finalizers": ["agentrun.dev/finalizer"], "resourceVersion": rv}}, False),
                    ({"metadata": {"resourceVersion": None}, "status": {"phase": "Running"}}, True),
                    ({"metadata": {"resourceVersion": None}, "status": {"phase": "Succeeded"}}, True),
                    ({"metadata": {"finalizers": None, "resourceVersion": None}}, False),
                ):
                    patch["metadata"]["resourceVersion"] = rv
                    call = (
                        self.custom.patch_namespaced_custom_object_status
                        if status
                        else self.custom.patch_namespaced_custom_object
                    )
                    body = await call(GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=merge)
                    rv = body["metadata"]["resourceVersion"]
                return time.time() - began

        began = time.time()
        # The same completion watch as in the operator scenarios runs here too, so the API
        # server carries the same watch load in both and only the writers differ.
        watcher = asyncio.create_task(self.wait_all_terminal(namespace, count, limit=600))
        latencies = await asyncio.gather(*(one(i) for i in range(count)))
        wall = time.time() - began
        await watcher
        return {
            "runs": count,
            "wall_seconds": round(wall, 2),
            "runs_per_second": round(count / wall, 1),
            "create_to_succeeded": latency_summary(list(latencies)),
            "writes_per_run": 4,
        }

    async def concurrency(self, count: int, delay: float, cap: int) -> dict[str, Any]:
        namespace = await self.namespace(f"concurrency-{count}")
        with self.operator(namespace, max_concurrent_runs=cap):
            began = time.time()
            await self.create_runs(namespace, [echo_run(f"r{i}", delay) for i in range(count)])
            items = await self.wait_all_terminal(namespace, count, limit=300)
            wall = time.time() - began
        ideal = delay * -(-count // cap)
        return {
            "runs": count,
            "delay_seconds": delay,
            "cap": cap,
            "wall_seconds": round(wall, 2),
            "ideal_seconds": ideal,
            "phases": dict(collections.Counter(i["status"]["phase"] for i in items.values())),
        }

    async def seed_finished(self, namespace: str, count: int, **spec: Any) -> None:
        """``count`` runs that finished long ago, written straight to the API server."""
        status = manifests.finished_status()
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def seed(i: int) -> None:
            async with semaphore:
                manifest = echo_run(f"done-{i}")
                manifest["spec"].update(spec)
                await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
                await self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, f"done-{i}", {"status": status},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip

        await asyncio.gather(*(seed(i) for i in range(count)))

    async def restart(self, finished: int) -> dict[str, Any]:
        """Start over ``finished`` finished runs: time to ready, and writes made to them."""
        namespace = await self.namespace(f"restart-{finished}")
        await self.seed_finished(namespace, finished)
        began = time.monotonic()
        process = processes.OperatorProcess(
            kubeconfig=self.cluster.operator_kubeconfig,
            namespaces=[namespace],
            log_dir=self.workdir,
            log_level="WARNING",
        )
        process.start(wait_ready=False)
        try:
            await asyncio.to_thread(process.wait_ready, 120)
            ready = time.monotonic() - began
            # A run created now is seen after the initial listing: once it is done, so is the start-up.
            await self.create_runs(namespace, [echo_run("sentinel")])
            await self.wait_all_terminal(namespace, finished + 1, limit=120)
            settled = time.monotonic() - began
            rss = ProcessSampler(process.process.pid).rss() if process.process else 0
        finally:
            process.stop()
        writes = [
            entry
            for entry in self.cluster.audit_events()
            if entry["user"]["username"] == localcluster.OPERATOR_USER
            and (entry.get("objectRef") or {}).get("namespace") == namespace
            and entry.get("stage") == "ResponseComplete"
            and (entry.get("objectRef") or {}).get("name", "").startswith("done-")
        ]
        return {
            "finished_runs": finished,
            "seconds_to_ready": round(ready, 2),
            "seconds_to_first_new_run_done": round(settled, 2),
            "writes_to_finished_runs": len(writes),
            "operator_rss_mb": round(rss / 2**20, 1),
        }

    async def expiry(self, expired: int, probes: int) -> dict[str, Any]:
        """``expired`` runs past their time to live, deleted while ``probes`` new runs go one at a time."""
        namespace = await self.namespace(f"expiry-{expired}")
        await self.seed_finished(namespace, expired, ttlSecondsAfterFinished=60)
        to_done: list[float] = []
        began = time.monotonic()
        with self.operator(namespace):
            for i in range(probes):
                created = await self.create_runs(namespace, [echo_run(f"probe-{i}")])
                while True:
                    body = await self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, f"probe-{i}"
                    )
                    status = body.get("status") or {}
                    if status.get("phase") in TERMINAL:
                        to_done.append(parse_time(status["completionTime"]) - created[f"probe-{i}"])
                        break
                    await asyncio.sleep(0.005)
            while True:
                listed = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1)
                left = (listed.get("metadata") or {}).get("remainingItemCount", 0) + len(listed["items"]) - probes
                if left <= 0:
                    break
                if time.monotonic() - began > 600:
                    raise RuntimeError(f"{left} expired runs still present after 600 s")
                await asyncio.sleep(0.5)
            deleted_in = time.monotonic() - began
        return {
            "expired_runs": expired,
            "seconds_to_delete_all": round(deleted_in, 2),
            "deletions_per_second": round(expired / deleted_in, 1),
            "new_runs_meanwhile": probes,
            "create_to_succeeded": latency_summary(to_done),
        }


NAIVE_DISCOVERY_RULES = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bench-naive-kopf-discovery}
rules:
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bench-naive-kopf-discovery}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bench-naive-kopf-discovery}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: %s}
"""


@contextlib.contextmanager
def naive_operator(bench: Bench, namespace: str) -> Iterator[processes.OperatorProcess]:
    """The textbook kopf operator (bench/naive_operator.py) on the same workload.

    It runs under the same identity as the operator (the audit log counts its writes the
    same way), plus what a default kopf operator needs and agentrun does not: listing
    namespaces and CRDs.
    """
    bench.cluster.kubectl("apply", "-f", "-", stdin=NAIVE_DISCOVERY_RULES % localcluster.OPERATOR_USER)
    process = processes.OperatorProcess(
        kubeconfig=bench.cluster.operator_kubeconfig, namespaces=[namespace], log_dir=bench.workdir
    )
    log = process.log_path.open("ab")
    process.process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "--namespace",
            namespace,
            "--liveness",
            f"http://127.0.0.1:{process.liveness_port}/healthz",
            "-q",
            str(ROOT / "bench" / "naive_operator.py"),
        ],
        env=process.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.wait_until(lambda: process.probe("/healthz") is not None, timeout=60, what="the naive operator")
    try:
        yield process
    finally:
        process.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [20, 100] if args.quick else [100, 1000, 5000]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="agentrun-bench-"))
    with localcluster.running(workdir / "cluster", audit=True) as cluster:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = CREATE_CONCURRENCY
        async with client.ApiClient(configuration) as api:
            bench = Bench(cluster, workdir, api, client.CustomObjectsApi(api))
            results: dict[str, Any] = {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                    "kube_apiserver": cluster.version(),
                },
                "operator": {},
                "floor": {},
                "naive": {},
            }

            async def step(name: str, coroutine: Awaitable[dict[str, Any]]) -> dict[str, Any]:
                print(f"bench: {name} ...", flush=True)
                result = await coroutine
                print(f"bench: {name}: {json.dumps(result)}", flush=True)
                return result

            await bench.floor(20)  # warm up the API server and the connection pool
            results["low_load"] = await step("low load", bench.low_load(20 if args.quick else 50))
            for size in sizes:
                results["floor"][str(size)] = await step(f"floor {size}", bench.floor(size))
                results["operator"][str(size)] = await step(
                    f"operator {size}",
                    bench.burst(
                        "operator",
                        size,
                        lambda ns: bench.operator(ns, max_concurrent_runs=100),
                        localcluster.OPERATOR_USER,
                    ),
                )
            naive_size = sizes[1]
            results["naive"][str(naive_size)] = await step(
                f"naive kopf operator {naive_size}",
                bench.burst("naive", naive_size, lambda ns: naive_operator(bench, ns), localcluster.OPERATOR_USER),
            )
            results["concurrency"] = await step(
                "concurrency", bench.concurrency(200 if not args.quick else 40, 2.0, 100 if not args.quick else 20)
            )
            results["restart"] = await step("restart", bench.restart(10_000 if not args.quick else 500))
            results["expiry"] = await step("expiry", bench.expiry(2000 if not args.quick else 200, 20))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | runs | runs/s | vs floor | create→Running p50/p95/p99 ms "
        "| create→Succeeded p50/p95/p99 ms | writes/run | RSS peak MB | CPU ms/run |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for label in ("floor", "operator", "naive"):
        for size, row in results[label].items():
            floor = results["floor"].get(size) or next(iter(results["floor"].values()))
            ratio = row["runs_per_second"] / floor["runs_per_second"]
            running = row.get("create_to_running") or {}
            done = row["create_to_succeeded"]
            lines.append(
                f"| {label} | {size} | {row['runs_per_second']} | {ratio:.0%} | "
                f"{running.get('p50_ms', '-')}/{running.get('p95_ms', '-')}/{running.get('p99_ms', '-')} | "
                f"{done['p50_ms']}/{done['p95_ms']}/{done['p99_ms']} | {row['writes_per_run']} | "
                f"{row.get('operator_rss_peak_mb', '-')} | {row.get('cpu_ms_per_run', '-')} |"
            )
    c, r, low = results["concurrency"], results["restart"], results["low_load"]
    lines.append("")
    lines.append(
        f"Low load ({low['runs']} runs one at a time): "
        f"create→Running p50 {low['create_to_running']['p50_ms']} ms, "
        f"create→Succeeded p50 {low['create_to_succeeded']['p50_ms']} ms, "
        f"p95 {low['create_to_succeeded']['p95_ms']} ms."
    )
    lines.append(
        f"Concurrency: {c['runs']} runs of {c['delay_seconds']} s at a cap of {c['cap']}: "
        f"{c['wall_seconds']} s (ideal {c['ideal_seconds']} s)."
    )
    lines.append(
        f"Restart over {r['finished_runs']} finished runs: ready in {r['seconds_to_ready']} s, "
        f"first new run done at {r['seconds_to_first_new_run_done']} s, "
        f"{r['writes_to_finished_runs']} writes to finished runs, RSS {r['operator_rss_mb']} MB."
    )
    e = results["expiry"]
    lines.append(
        f"Expiry: {e['expired_runs']} runs past their time to live deleted in {e['seconds_to_delete_all']} s "
        f"({e['deletions_per_second']}/s) while {e['new_runs_meanwhile']} new runs, one at a time, took "
        f"create→Succeeded p50 {e['create_to_succeeded']['p50_ms']} ms, p95 {e['create_to_succeeded']['p95_ms']} ms."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    args = parser.parse_args()
    began = time.monotonic()
    results = asyncio.run(main_async(args))
    results["seconds"] = round(time.monotonic() - began, 1)
    results["quick"] = args.quick
    results["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else "latest.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nresults: {RESULTS / name} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
