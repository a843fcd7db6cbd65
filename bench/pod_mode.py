"""Pod-mode benchmark: the operator running each run in a Pod, against a floor that creates the same Pods.

Needs a real node (root; one node per machine): it starts the node tier's cluster with the
operator image built from the Dockerfile. Both scenarios run on that one node, one after
the other, so their ratio compares like with like:

- floor: the runner Pods the operator would create (same manifest, same input Secret),
  created directly by a client, with no operator;
- operator: the same number of pod-mode AgentRuns, the operator running out of cluster
  under a ServiceAccount with the chart's pod-mode rules.

Reported per scenario: runs/s, create→Running and create→Succeeded p50/p95 (observed by
polling the API every 100 ms: the Pod's phase for the floor, the AgentRun's for the
operator, whose Running means admitted), and, for the operator, writes per run to
AgentRuns from the API server's audit log.

Wiring into ``bench/run.py`` (owned elsewhere): call :func:`measure` with a work directory
and a run count, and store the returned mapping under ``"pod_mode"`` in the results; it
must run outside the API-server-only control plane that the other scenarios share. Run
alone: ``sudo .venv/bin/python bench/pod_mode.py --runs 20``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

import localcluster  # noqa: E402
import manifests  # noqa: E402
import processes  # noqa: E402
from agentrun.api import models  # noqa: E402
from agentrun.pods import entry, spec  # noqa: E402
from localnode import cluster as nodecluster  # noqa: E402
from localnode import images  # noqa: E402

NAMESPACE = "bench-pods"
IDENTITY = "agentrun-bench"
POLL_SECONDS = 0.1
RULES = [
    {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agentruns/status"], "verbs": ["patch"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agents", "agentthreads"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(created: float, running: dict[str, float], done: dict[str, float], runs: int) -> dict[str, Any]:
    to_running = [at - created for at in running.values()]
    to_done = [at - created for at in done.values()]
    elapsed = max(done.values()) - created if done else None
    return {
        "runs": runs,
        "succeeded": len(done),
        "runs_per_s": round(len(done) / elapsed, 2) if elapsed else None,
        "create_to_running_ms": {q: _ms(percentile(to_running, p)) for q, p in (("p50", 0.5), ("p95", 0.95))},
        "create_to_succeeded_ms": {q: _ms(percentile(to_done, p)) for q, p in (("p50", 0.5), ("p95", 0.95))},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def observe(
    kubectl: Callable[..., Any], kind: str, names: set[str], phase_of: Callable[[dict[str, Any]], str], timeout: float
) -> tuple[dict[str, float], dict[str, float]]:
    """When each object was first seen Running and Succeeded, polling the API."""
    running: dict[str, float] = {}
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(names) and time.monotonic() < deadline:
        items = json.loads(kubectl("get", kind, "-n", NAMESPACE, "-o", "json").stdout)["items"]
        now = time.monotonic()
        for item in items:
            name, phase = item["metadata"]["name"], phase_of(item)
            if name not in names:
                continue
            if phase in ("Running", "Succeeded"):
                running.setdefault(name, now)
            if phase == "Succeeded":
                done.setdefault(name, now)
        time.sleep(POLL_SECONDS)
    return running, done


def apply(kubectl: Callable[..., Any], objects: list[dict[str, Any]]) -> None:
    kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def floor(kubectl: Callable[..., Any], image: str, runs: int) -> dict[str, Any]:
    """The runner Pods, created directly with their input Secrets: what pod mode cannot beat."""
    run_spec = models.AgentRunSpec.model_validate(manifests.echo_run("x", "benchmark")["spec"])
    objects: list[dict[str, Any]] = []
    names = set()
    for index in range(runs):
        name, uid = f"floor-{index}", f"floor{index:04d}"
        secret = spec.input_secret_name(name, uid)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret},
                "stringData": {entry.INPUT_KEY: entry.input_document(NAMESPACE, spec.runner_input(run_spec))},
            }
        )
        pod = spec.build_pod(
            namespace=NAMESPACE, run_name=name, run_uid=uid, attempt=1, pod_name=f"{name}-a1", spec=run_spec,
            defaults=spec.PodDefaults(image=image), deadline_seconds=600,
        )  # fmt: skip
        pod["metadata"].pop("ownerReferences")  # no run owns them
        objects.append(pod)
        names.add(f"{name}-a1")
    created = time.monotonic()
    apply(kubectl, objects)
    running, done = observe(kubectl, "pods", names, lambda pod: pod["status"].get("phase", ""), timeout=600)
    return summary(created, running, done, runs)


def operator(kubectl: Callable[..., Any], node: nodecluster.NodeCluster, image: str, runs: int) -> dict[str, Any]:
    objects = []
    for index in range(runs):
        run = manifests.echo_run(f"run-{index}", "benchmark", runner={"mode": "pod"})
        objects.append(run)
    created = time.monotonic()
    apply(kubectl, objects)
    names = {run["metadata"]["name"] for run in objects}
    running, done = observe(
        kubectl, "agentruns", names, lambda run: (run.get("status") or {}).get("phase", ""), timeout=600
    )
    result = summary(created, running, done, runs)
    user = f"system:serviceaccount:{NAMESPACE}:{IDENTITY}"
    writes = [
        entry
        for entry in node.control_plane.audit_events()
        if entry["user"]["username"] == user
        and entry.get("stage") == "ResponseComplete"
        and (entry.get("objectRef") or {}).get("resource") == "agentruns"
    ]
    result["writes_per_run"] = round(len(writes) / runs, 2)
    return result


def measure(workdir: pathlib.Path, runs: int = 20) -> dict[str, Any]:
    """Start a node, run both scenarios on it, stop it; the figures as JSON-ready data."""
    binaries = localcluster.find_binaries()
    image = images.operator_image(images.python_base())
    node = nodecluster.NodeCluster(workdir / "node", binaries, audit=True)
    node.start([image])
    operator_process: processes.OperatorProcess | None = None
    try:

        def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> Any:
            return subprocess.run(
                [str(binaries.kubectl), "--kubeconfig", str(node.kubeconfig), *args],
                input=stdin, capture_output=True, text=True, check=check,
            )  # fmt: skip

        kubectl("create", "namespace", NAMESPACE)
        kubectl("create", "serviceaccount", "default", "-n", NAMESPACE, check=False)  # the controller may be first
        kubectl("create", "serviceaccount", IDENTITY, "-n", NAMESPACE)
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": IDENTITY},
            "rules": RULES,
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": IDENTITY},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": IDENTITY},
            "subjects": [{"kind": "ServiceAccount", "name": IDENTITY, "namespace": NAMESPACE}],
        }
        apply(kubectl, [role, binding])
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            kubectl("apply", "--server-side", "-f", str(crd))
        kubectl("wait", "--for=condition=Established", "crd/agentruns.agentrun.dev", "--timeout=60s")
        results: dict[str, Any] = {"floor": floor(kubectl, image.name, runs)}
        token = kubectl("create", "token", IDENTITY, "-n", NAMESPACE, "--duration=1h").stdout.strip()
        kubeconfig = node.control_plane.write_kubeconfig(
            workdir / "operator.kubeconfig", f"system:serviceaccount:{NAMESPACE}:{IDENTITY}", token
        )
        operator_process = processes.OperatorProcess(
            kubeconfig=kubeconfig, namespaces=[NAMESPACE], log_dir=workdir, runner_image=image.name
        ).start()
        results["operator"] = operator(kubectl, node, image.name, runs)
        base, measured = results["floor"], results["operator"]
        if base["runs_per_s"] and measured["runs_per_s"]:
            results["throughput_vs_floor"] = round(measured["runs_per_s"] / base["runs_per_s"], 2)
        p50_floor = base["create_to_succeeded_ms"]["p50"]
        p50_operator = measured["create_to_succeeded_ms"]["p50"]
        if p50_floor and p50_operator:
            results["p50_succeeded_vs_floor"] = round(p50_operator / p50_floor, 2)
        return results
    finally:
        if operator_process is not None:
            operator_process.stop()
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentrun-bench-pods-") as workdir:
        print(json.dumps(measure(pathlib.Path(workdir), args.runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
