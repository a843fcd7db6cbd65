"""The benchmark's scenarios, each measured on the shared throwaway control plane.

A scenario creates its own namespace, starts the process under test on it, drives a
workload and returns a plain dict of figures. Writes are counted by the API server
(its audit log, filtered to the identity of the process under test), not by the
operator's own word. ``run.py`` decides which scenarios run, how often, in what order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import itertools
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes_asyncio import client, watch

import observe
from agentrun.api import models

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

import localcluster  # noqa: E402
import manifests  # noqa: E402
import processes  # noqa: E402

GROUP, VERSION, PLURAL = observe.GROUP, observe.VERSION, observe.PLURAL
TERMINAL = observe.TERMINAL
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


class SourceOperatorProcess(processes.OperatorProcess):
    """``agentrun operator`` run from another source tree (a baseline), on this venv's packages.

    ``PYTHONPATH`` puts the tree's ``operator/`` ahead of the editable install, so the same
    interpreter and dependencies run another commit's operator code.
    """

    def __init__(self, *, source: pathlib.Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.env["PYTHONPATH"] = str(source / "operator")

    def start(self, *, wait_ready: bool = True) -> SourceOperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentrun", "operator"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_ready:
            self.wait_ready()
        return self


@dataclasses.dataclass
class Bench:
    cluster: localcluster.LocalCluster
    workdir: pathlib.Path
    api: client.ApiClient
    custom: client.CustomObjectsApi
    audit: observe.AuditLog
    _namespaces: int = 0

    # --- cluster helpers -------------------------------------------------------------

    async def namespace(self, stem: str) -> str:
        """A fresh namespace (a scenario runs more than once: trials, the warm-up floor)."""
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

    async def wait_all_terminal(
        self, namespace: str, count: int, limit: float, label_selector: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Watch the namespace until ``count`` runs are terminal; returns their final objects."""
        finished: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + limit
        resource_version = None
        selector = {"label_selector": label_selector} if label_selector else {}
        while len(finished) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(finished)}/{count} runs terminal after {limit:.0f}s in {namespace}")
            if resource_version is None:
                listing = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **selector)
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
                    **selector,
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

    async def count_in_phase(self, namespace: str, label_selector: str, phase: str) -> int:
        listing = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=label_selector
        )
        return sum(1 for item in listing["items"] if (item.get("status") or {}).get("phase") == phase)

    def writes(self, namespace: str, username: str) -> collections.Counter[str]:
        """Writes by ``username`` in ``namespace``, keyed "verb resource[/subresource][ refused-code]"."""
        return self.audit.counts(namespace, username)

    def operator_process(
        self, namespace: str, *, source: pathlib.Path | None = None, **settings: Any
    ) -> processes.OperatorProcess:
        """An operator on ``namespace`` (not started): this tree's, or the one in ``source``."""
        common: dict[str, Any] = {
            "kubeconfig": self.cluster.operator_kubeconfig,
            "namespaces": [namespace],
            "log_dir": self.workdir,
            "log_level": "WARNING",
        }
        if source is not None:
            return SourceOperatorProcess(source=source, **common, **settings)
        return processes.OperatorProcess(**common, **settings)

    @contextlib.contextmanager
    def operator(
        self, namespace: str, *, source: pathlib.Path | None = None, **settings: Any
    ) -> Iterator[processes.OperatorProcess]:
        process = self.operator_process(namespace, source=source, **settings)
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
        writes = self.audit.writes(namespace, username)
        run_writes = sum(1 for write in writes if write.counts_as_run_write)
        refused = sum(1 for write in writes if write.code >= 400)
        by_request = collections.Counter(write.key for write in writes)
        return {
            "runs": count,
            "phases": dict(phases),
            "wall_seconds": round(wall, 2),
            "runs_per_second": round(count / wall, 1),
            "create_to_running": latency_summary(to_running),
            "create_to_succeeded": latency_summary(to_done),
            "writes_per_run": round(run_writes / count, 2),
            "refused_writes_per_run": round(refused / count, 2),
            "writes_by_request": {k: round(v / count, 2) for k, v in sorted(by_request.items())},
            "operator_rss_peak_mb": round(sampler.peak_rss / 2**20, 1) if sampler else None,
            "operator_rss_end_mb": round(rss_end / 2**20, 1) if rss_end else None,
            "cpu_ms_per_run": round(cpu / count * 1000, 2) if cpu is not None else None,
        }

    async def low_load(self, count: int, source: pathlib.Path | None = None) -> dict[str, Any]:
        """One run at a time: the latency a single request sees on an idle operator."""
        namespace = await self.namespace(f"low-load-{count}")
        to_running: list[float] = []
        to_done: list[float] = []
        with self.operator(namespace, source=source):
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
                steps: tuple[tuple[dict[str, Any], bool], ...] = (  # (merge patch, to the status subresource)
                    ({"metadata": {"finalizers": ["agentrun.dev/finalizer"], "resourceVersion": rv}}, False),
                    ({"metadata": {"resourceVersion": None}, "status": {"phase": "Running"}}, True),
                    ({"metadata": {"resourceVersion": None}, "status": {"phase": "Succeeded"}}, True),
                    ({"metadata": {"finalizers": None, "resourceVersion": None}}, False),
                )
                for patch, status in steps:
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

    async def seed_finished(self, namespace: str, count: int, **spec: Any) -> float:
        """``count`` runs that finished long ago, written straight to the API server; returns seconds taken.

        They are written as the admin, so the audit log does not count them as operator writes,
        and look as the operator leaves a run it let go of: finished, no finalizer, labelled
        ``agentrun.dev/finished``.
        """
        status = manifests.finished_status()
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def seed(i: int) -> None:
            async with semaphore:
                manifest = echo_run(f"done-{i}")
                manifest["metadata"]["labels"] = {models.FINISHED_LABEL: "true"}
                manifest["spec"].update(spec)
                await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
                await self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, f"done-{i}", {"status": status},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip

        began = time.monotonic()
        await asyncio.gather(*(seed(i) for i in range(count)))
        return round(time.monotonic() - began, 1)

    async def restart(self, namespace: str, finished: int) -> dict[str, Any]:
        """Start over ``finished`` finished runs (already seeded): time to ready, and writes made to them."""
        began = time.monotonic()
        process = self.operator_process(namespace)
        process.start(wait_ready=False)
        try:
            await asyncio.to_thread(process.wait_ready, 120)
            ready = time.monotonic() - began
            # A run created now is seen after the initial listing: once it is done, so is the start-up.
            await self.create_runs(namespace, [echo_run("sentinel")])
            await self._wait_done(namespace, "sentinel", limit=120, interval=0.05)
            settled = time.monotonic() - began
            rss = ProcessSampler(process.process.pid).rss() if process.process else 0
        finally:
            process.stop()
        writes = [w for w in self.audit.writes(namespace, localcluster.OPERATOR_USER) if w.name.startswith("done-")]
        return {
            "finished_runs": finished,
            "seconds_to_ready": round(ready, 2),
            "seconds_to_first_new_run_done": round(settled, 2),
            "writes_to_finished_runs": len(writes),
            "operator_rss_mb": round(rss / 2**20, 1),
        }

    async def _wait_done(self, namespace: str, name: str, limit: float, interval: float = 0.005) -> dict[str, Any]:
        """Poll one run until it is terminal (cheaper than watching a namespace of 10,000 runs)."""
        deadline = time.monotonic() + limit
        while True:
            body: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            if (body.get("status") or {}).get("phase") in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace}/{name} not terminal after {limit:.0f}s")
            await asyncio.sleep(interval)

    async def memory(self, namespace: str, finished: int, active: int, delay: float) -> dict[str, Any]:
        """RSS of an operator over ``finished`` finished runs while ``active`` runs execute.

        The active runs are created once the operator is ready and carry a label, so the
        harness can count them without listing the finished ones. RSS is sampled while
        every one of them is Running; the peak of that window is the figure.
        """
        label = f"bench-memory-{self._namespaces}"
        runs = [echo_run(f"active-{i}", delay) for i in range(active)]
        for run in runs:
            run["metadata"]["labels"] = {"bench": label}
        selector = f"bench={label}"
        with self.operator(namespace, max_concurrent_runs=active) as process:
            assert process.process is not None
            sampler = ProcessSampler(process.process.pid)
            rss_ready = sampler.rss()
            await self.create_runs(namespace, runs)
            deadline = time.monotonic() + delay
            while await self.count_in_phase(namespace, selector, "Running") < active:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not all {active} runs Running within {delay:.0f}s in {namespace}")
                await asyncio.sleep(0.1)
            with sampler:
                await asyncio.sleep(min(3.0, delay / 3))  # the window in which all are active
                still_running = await self.count_in_phase(namespace, selector, "Running")
            await self.wait_all_terminal(namespace, active, limit=delay + 60, label_selector=selector)
        return {
            "finished_runs": finished,
            "active_runs": active,
            "active_during_sample": still_running,
            "rss_at_ready_mb": round(rss_ready / 2**20, 1),
            "rss_with_active_mb": round(sampler.peak_rss / 2**20, 1),
        }

    async def heartbeat(self, seconds: float) -> dict[str, Any]:
        """The writes one ``seconds``-long run receives between Running and terminal.

        A zero-delay run in the same namespace first gives the writes every run gets
        (admission, Running, terminal, release); what the long run gets beyond that is
        made while it runs. A watch shows each of those changes: one that adds entries to
        ``status.events`` is progress (the echo model records its model request); one that
        only renews ``status.runner.heartbeatTime`` is a heartbeat.
        """
        namespace = await self.namespace("heartbeat")
        async with observe.RunObserver(self.custom, namespace) as observer:
            with self.operator(namespace):
                await self.create_runs(namespace, [echo_run("short")])
                await self.wait_all_terminal(namespace, 1, limit=60)
                await self.create_runs(namespace, [echo_run("long", seconds)])
                await self.wait_all_terminal(namespace, 2, limit=seconds + 60)
            history = observer.sightings["long"]
        writes = collections.Counter(
            w.name for w in self.audit.writes(namespace, localcluster.OPERATOR_USER) if w.counts_as_run_write
        )
        running = [s for s in history if s.phase == "Running"]
        changes = list(itertools.pairwise(running))
        progress = sum(1 for before, after in changes if after.event_count > before.event_count)
        renewals = sum(1 for before, after in changes if after.heartbeat_time != before.heartbeat_time)
        return {
            "run_seconds": seconds,
            "writes_to_zero_delay_run": writes["short"],
            "writes_to_long_run": writes["long"],
            "writes_beyond_zero_delay_run": writes["long"] - writes["short"],
            "changes_seen_while_running": len(changes),
            "of_which_progress": progress,
            "of_which_renewed_heartbeat_time": renewals,
        }

    async def expiry(self, expired: int, probes: int) -> dict[str, Any]:
        """``expired`` runs past their time to live, deleted while ``probes`` new runs go one at a time."""
        namespace = await self.namespace(f"expiry-{expired}")
        await self.seed_finished(namespace, expired, ttlSecondsAfterFinished=60)
        to_done: list[float] = []
        # Ten deletions a second at least (about 20 are made on this machine): past that,
        # the operator is not deleting them.
        limit = 60 + expired / 10
        began = time.monotonic()
        with self.operator(namespace):
            for i in range(probes):
                created = await self.create_runs(namespace, [echo_run(f"probe-{i}")])
                status = (await self._wait_done(namespace, f"probe-{i}", limit=60))["status"]
                to_done.append(parse_time(status["completionTime"]) - created[f"probe-{i}"])
            while True:
                listed = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1)
                left = (listed.get("metadata") or {}).get("remainingItemCount", 0) + len(listed["items"]) - probes
                if left <= 0:
                    break
                if time.monotonic() - began > limit:
                    raise RuntimeError(f"{left} of {expired} expired runs still present after {limit:.0f} s")
                await asyncio.sleep(0.5)
            deleted_in = time.monotonic() - began
        return {
            "expired_runs": expired,
            "seconds_to_delete_all": round(deleted_in, 2),
            "deletions_per_second": round(expired / deleted_in, 1),
            "new_runs_meanwhile": probes,
            "create_to_succeeded": latency_summary(to_done),
        }


LEASE_RULES = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bench-operator-leases}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bench-operator-leases}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bench-operator-leases}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: %s}
"""


def grant_leases(cluster: localcluster.LocalCluster) -> None:
    """Leases for the identity under test, in every namespace.

    An operator that elects a leader holds a Lease in the first namespace it watches,
    and every scenario watches a namespace of its own. The chart grants Leases in the
    operator's own namespace only, which the bench does not have; without this grant
    such an operator would never lead. Granted whether the build needs it or not.
    """
    cluster.kubectl("apply", "-f", "-", stdin=LEASE_RULES % localcluster.OPERATOR_USER)
    can_i = ["auth", "can-i", "update", "leases.coordination.k8s.io", "--all-namespaces"]
    processes.wait_until(
        lambda: cluster.kubectl(*can_i, f"--as={localcluster.OPERATOR_USER}", check=False).stdout.strip() == "yes",
        timeout=30,
        interval=0.2,
        what=f"{localcluster.OPERATOR_USER} to be granted leases",
    )


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
