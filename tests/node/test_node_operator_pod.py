"""The chart's Deployment on a real node: the operator image from the Dockerfile runs in a Pod.

One release for the module, cluster-wide (the chart's default), with a small status
budget so that long outputs are offloaded to Secrets. The tests run in file order: the
rollout restart comes late, and the last test uninstalls the release.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import harness
import nodetier

pytestmark = pytest.mark.node

RELEASE = "agentrun-operator"
CRD = "agentruns.agentrun.dev"
CRDS = (CRD, "agents.agentrun.dev", "agentthreads.agentrun.dev")
SHUTDOWN_REASONS = ("OperatorShutdown", "OperatorRestarted")


@dataclasses.dataclass
class Release:
    namespace: str  # the operator's own
    runs: str  # where the tests create AgentRuns
    uninstalled: bool = False

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{RELEASE}"


@pytest.fixture(scope="module")
def release(node: nodetier.Node) -> Iterator[Release]:
    suffix = secrets.token_hex(3)
    handle = Release(f"agentrun-system-{suffix}", f"node-runs-{suffix}")
    node.cluster.kubectl("create", "namespace", handle.runs)
    try:
        node.helm.run(
            "install", RELEASE, str(harness.ROOT / "charts" / "agentrun-operator"),
            "--namespace", handle.namespace, "--create-namespace",
            *node.operator_values,
            # Outputs over 4 KiB go to a Secret owned by the run.
            "--set", "operator.statusBudgetBytes=4096",
            "--set", "operator.shutdownGraceSeconds=3",
            "--set", "operator.heartbeatIntervalSeconds=2",
            "--set", "operator.heartbeatTimeoutSeconds=6",
            # Probe early and often, so the kubelet's liveness probe has passed within seconds.
            "--set", "livenessProbe.initialDelaySeconds=1",
            "--set", "livenessProbe.periodSeconds=2",
        )  # fmt: skip
        nodetier.wait_available(node, handle.namespace, RELEASE)
        yield handle
    finally:
        if not handle.uninstalled:
            node.helm.run("uninstall", RELEASE, "--namespace", handle.namespace, "--wait", check=False)
        wait_no_pods(node, handle.namespace)
        # Leave the cluster as the module found it, without the CRD: the README test installs it afresh.
        runs = json.loads(node.cluster.kubectl("get", "agentruns", "-A", "-o", "json", check=False).stdout or "{}")
        for item in runs.get("items", []):
            if item["metadata"].get("finalizers"):  # only if a test failed before its run ended
                node.cluster.kubectl(
                    "patch", "agentrun", item["metadata"]["name"], "-n", item["metadata"]["namespace"],
                    "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        node.cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--timeout=60s", check=False)
        for created in (handle.namespace, handle.runs):
            node.cluster.kubectl("delete", "namespace", created, "--wait=false", check=False)


def wait_no_pods(node: nodetier.Node, namespace: str) -> None:
    def gone() -> bool:
        result = node.cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False)
        return result.returncode == 0 and not result.stdout.strip()

    harness.wait_until(gone, timeout=60, interval=0.5, what=f"no pods left in {namespace}")


def operator_pod(node: nodetier.Node, release: Release) -> dict[str, Any]:
    pods = json.loads(
        node.cluster.kubectl(
            "get", "pods", "-n", release.namespace, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        ).stdout
    )["items"]
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [pod["metadata"]["name"] for pod in pods]
    return dict(live[0])


def exec_in(node: nodetier.Node, release: Release, *command: str, check: bool = True) -> str:
    name = operator_pod(node, release)["metadata"]["name"]
    result = node.cluster.kubectl("exec", "-n", release.namespace, name, "-c", "operator", "--", *command, check=check)
    return result.stdout + result.stderr


def kubelet_probe_successes(node: nodetier.Node, pod: str, probe: str) -> int:
    """Successful probes of the operator container, from the kubelet's own counters."""
    metrics = node.cluster.kubectl("get", "--raw", f"/api/v1/nodes/{node.local.node_name}/proxy/metrics/probes").stdout
    total = 0
    for line in metrics.splitlines():
        labels = (f'pod="{pod}"', f'probe_type="{probe}"', 'result="successful"')
        if line.startswith("prober_probe_total{") and all(label in line for label in labels):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_deployment_is_available_and_both_probes_pass(node: nodetier.Node, release: Release) -> None:
    deployment = node.cluster.get("deployment", RELEASE, release.namespace)
    assert deployment is not None
    conditions = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
    assert conditions["Available"] == "True"
    assert deployment["status"]["readyReplicas"] == 1
    pod = operator_pod(node, release)
    name = pod["metadata"]["name"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == node.operator_image.name
    assert container["imagePullPolicy"] == "IfNotPresent"
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] is True
    assert "running" in status["state"], status["state"]
    assert status["restartCount"] == 0
    assert status["image"].endswith(node.operator_image.name.split("/", 1)[1])
    assert pod["spec"]["nodeName"] == node.local.node_name
    # Ready means the readiness probe passed; the kubelet counts the liveness probe's successes too.
    harness.wait_until(
        lambda: kubelet_probe_successes(node, name, "Liveness") >= 2,
        timeout=30,
        interval=0.5,
        what="the kubelet to count two successful liveness probes",
    )
    assert kubelet_probe_successes(node, name, "Readiness") >= 1
    assert operator_pod(node, release)["status"]["containerStatuses"][0]["restartCount"] == 0


def test_operator_runs_as_65532_on_a_read_only_root_without_capabilities(node: nodetier.Node, release: Release) -> None:
    pod = operator_pod(node, release)
    [container] = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # What the kernel says about the operator process itself (PID 1 of the container).
    status = dict(
        line.split(":", 1) for line in exec_in(node, release, "cat", "/proc/1/status").splitlines() if ":" in line
    )
    assert status["Uid"].split() == ["65532"] * 4
    assert status["Gid"].split() == ["65532"] * 4
    assert int(status["CapEff"], 16) == 0
    assert "agentrun" in exec_in(node, release, "cat", "/proc/1/cmdline")
    # A real write: the root filesystem refuses it as read-only (EROFS), not merely for permissions.
    attempt = (
        "import errno, os\n"
        "for path in ('/probe', '/usr/local/lib/probe'):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        print(path, 'written')\n"
        "    except OSError as error:\n"
        "        print(path, errno.errorcode[error.errno])\n"
        "open('/tmp/probe', 'w').close()\n"
        "print('/tmp writable')\n"
    )
    out = exec_in(node, release, "python3", "-c", attempt)
    assert out.splitlines() == ["/probe EROFS", "/usr/local/lib/probe EROFS", "/tmp writable"], out
    mounts = exec_in(node, release, "cat", "/proc/1/mounts").splitlines()
    [root] = [line for line in mounts if line.split()[1] == "/"]
    assert "ro" in root.split()[3].split(","), root


def test_pods_resolve_cluster_names_only_and_are_never_forwarded_out(node: nodetier.Node, release: Release) -> None:
    lookup = (
        "import socket\n"
        "print(socket.getaddrinfo('kubernetes.default.svc', 443, type=socket.SOCK_STREAM)[0][4][0])\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443)\n"
        "    print('resolved')\n"
        "except socket.gaierror:\n"
        "    print('unresolved')\n"
    )
    # The DNS stub on the node answers the API server's Service and nothing outside the cluster.
    assert exec_in(node, release, "python3", "-c", lookup).split() == [
        node.local.layout.kubernetes_service_ip,
        "unresolved",
    ]
    # Whatever a pod sends elsewhere is dropped before it could be forwarded out of the machine.
    rules = subprocess.run(["iptables", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True).stdout
    first = rules.splitlines()[1]
    assert f"-s {node.local.layout.pod_cidr} ! -o {node.local.layout.bridge}" in first, rules
    assert first.endswith("-j DROP"), rules


def test_operator_works_under_the_chart_service_account_and_runs_hello(node: nodetier.Node, release: Release) -> None:
    binding = node.cluster.kubectl("get", "clusterrolebinding", RELEASE, "-o", "json").stdout
    assert json.loads(binding)["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": release.namespace}
    ]
    token = exec_in(node, release, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["sub"] == release.user

    node.cluster.kubectl("apply", "-n", release.runs, "-f", str(harness.EXAMPLES / "hello.yaml"))
    status = node.cluster.wait_phase("hello", release.runs, timeout=60)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["runner"]["instance"] == operator_pod(node, release)["metadata"]["name"]
    # Every write to the run came from the chart's ServiceAccount (the API server's audit log).
    assert node.cluster.local is not None
    writers = {
        entry["user"]["username"]
        for entry in node.cluster.local.audit_events()
        if (entry.get("objectRef") or {}).get("resource") == "agentruns"
        and entry["objectRef"].get("namespace") == release.runs
        and entry["objectRef"].get("name") == "hello"
        and entry["verb"] == "patch"
    }
    assert writers == {release.user}


def test_offloaded_output_secret_is_garbage_collected_with_its_run(node: nodetier.Node, release: Release) -> None:
    prompt = "incident " * 600  # the echo answer is ~5.4 KB: over the 4 KiB budget
    node.cluster.apply(harness.echo_run("big", prompt), release.runs)
    body = node.cluster.wait_phase("big", release.runs, timeout=60)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    ref = body["status"]["outputRef"]
    secret = node.cluster.get("secret", ref["name"], release.runs)
    assert secret is not None
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("AgentRun", body["metadata"]["uid"])
    snapshot = body["status"]["sessionSnapshotRef"]["name"]

    node.cluster.kubectl("delete", "agentrun", "big", "-n", release.runs, "--timeout=30s")
    # kube-controller-manager's garbage collector removes what the run owned.
    for name in (ref["name"], snapshot):
        harness.wait_until(
            lambda name=name: node.cluster.get("secret", name, release.runs) is None,  # type: ignore[misc]
            timeout=30,
            interval=0.2,
            what=f"Secret {name} to be garbage-collected",
        )


def test_deleting_a_namespace_cancels_its_runs_and_completes(
    node: nodetier.Node, release: Release, tmp_path: pathlib.Path
) -> None:
    doomed = f"node-doomed-{secrets.token_hex(3)}"
    node.cluster.kubectl("create", "namespace", doomed)
    watch = harness.WatchRecorder(node.cluster, doomed, tmp_path)
    try:
        names = [f"long-{i}" for i in range(3)]
        for name in names:
            node.cluster.apply(harness.echo_run(name, "wait", delay=300), doomed)
        for name in names:
            node.cluster.wait_phase(name, doomed, "Running", timeout=60)
        node.cluster.kubectl("delete", "namespace", doomed, "--wait=false")
        harness.wait_until(
            lambda: "NotFound" in node.cluster.kubectl("get", "namespace", doomed, check=False).stderr,
            timeout=90,
            interval=0.5,
            what=f"namespace {doomed} to finish deleting",
        )
        for name in names:
            versions = watch.versions(name)
            cancelled = [s for s in versions if s.get("phase") == "Cancelled"]
            assert cancelled, f"{name} was never recorded Cancelled: {[s.get('phase') for s in versions]}"
            assert cancelled[-1]["reason"] == "Cancelled"
        # Gone for good: the operator released every finalizer, so the namespace could finish.
        assert {e["object"]["metadata"]["name"] for e in watch.events() if e["type"] == "DELETED"} == set(names)
    finally:
        watch.stop()


def test_rollout_restart_ends_every_in_flight_run_terminal(node: nodetier.Node, release: Release) -> None:
    names = [f"inflight-{i}" for i in range(3)]
    for name in names:
        node.cluster.apply(harness.echo_run(name, "wait", delay=300), release.runs)
    for name in names:
        node.cluster.wait_phase(name, release.runs, "Running", timeout=60)
    before = operator_pod(node, release)["metadata"]["name"]

    node.cluster.kubectl("rollout", "restart", f"deployment/{RELEASE}", "-n", release.namespace)
    # Created while the old Pod drains or before the new one is ready: the next instance runs it.
    node.cluster.apply(harness.echo_run("during-restart", "hello"), release.runs)
    node.cluster.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", release.namespace, "--timeout=120s")
    assert operator_pod(node, release)["metadata"]["name"] != before

    for name in names:
        status = node.cluster.wait_phase(name, release.runs, timeout=60)["status"]
        assert (status["phase"], status["reason"]) in {("Failed", reason) for reason in SHUTDOWN_REASONS}, status
    late = node.cluster.wait_phase("during-restart", release.runs, timeout=60)["status"]
    assert late["phase"] == "Succeeded", late
    items = json.loads(node.cluster.kubectl("get", "agentruns", "-n", release.runs, "-o", "json").stdout)["items"]
    assert [i["metadata"]["name"] for i in items if i["status"]["phase"] not in harness.TERMINAL] == []


def test_helm_uninstall_keeps_the_crd_and_the_runs(node: nodetier.Node, release: Release) -> None:
    before = json.loads(node.cluster.kubectl("get", "agentruns", "-n", release.runs, "-o", "json").stdout)["items"]
    assert before
    node.helm.run("uninstall", RELEASE, "--namespace", release.namespace, "--wait")
    release.uninstalled = True
    wait_no_pods(node, release.namespace)
    assert node.cluster.get("deployment", RELEASE, release.namespace) is None
    crd = json.loads(node.cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    after = json.loads(node.cluster.kubectl("get", "agentruns", "-n", release.runs, "-o", "json").stdout)["items"]
    assert {i["metadata"]["uid"]: i["status"]["phase"] for i in after} == {
        i["metadata"]["uid"]: i["status"]["phase"] for i in before
    }
