"""The chart's Deployment on a real node: the operator image from the Dockerfile runs in a Pod.

One release for the module, cluster-wide with two replicas (the chart's defaults), a short
Lease and a small status budget so that long outputs are offloaded to Secrets. One
replica leads, the other stands by. The tests run in file order: the rollout restart
comes late, and the last test uninstalls the release.
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
TERMINAL_EVENTS = ("run_succeeded", "run_failed", "run_cancelled")
# Runs caught by a handover are tried again on the next leader.
RETRY_LIMIT = 3
RETRY_HANDOVERS = {"limit": RETRY_LIMIT, "backoffSeconds": 1, "retryOn": list(SHUTDOWN_REASONS)}


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
            # A short Lease: a standby takes over a lost leader within 6 s.
            "--set", "leaderElection.leaseDurationSeconds=6",
            "--set", "leaderElection.renewDeadlineSeconds=4",
            "--set", "leaderElection.retryPeriodSeconds=1",
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


def operator_pods(node: nodetier.Node, release: Release) -> dict[str, dict[str, Any]]:
    """The operator Pods that are not terminating, by name."""
    pods = json.loads(
        node.cluster.kubectl(
            "get", "pods", "-n", release.namespace, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        ).stdout
    )["items"]
    return {pod["metadata"]["name"]: pod for pod in pods if not pod["metadata"].get("deletionTimestamp")}


def lease_holder(node: nodetier.Node, release: Release) -> str | None:
    lease = node.cluster.get("lease", RELEASE, release.namespace)
    return None if lease is None else lease["spec"].get("holderIdentity")


def operator_pod(node: nodetier.Node, release: Release) -> dict[str, Any]:
    """The leader: the live Pod that holds the Lease."""
    pods = operator_pods(node, release)
    holder = lease_holder(node, release)
    assert holder in pods, f"Lease holder {holder} is not one of the live operator Pods {sorted(pods)}"
    return dict(pods[holder])


def exec_in(node: nodetier.Node, release: Release, *command: str, pod: str | None = None, check: bool = True) -> str:
    name = pod or operator_pod(node, release)["metadata"]["name"]
    result = node.cluster.kubectl("exec", "-n", release.namespace, name, "-c", "operator", "--", *command, check=check)
    return result.stdout + result.stderr


def readyz(node: nodetier.Node, release: Release, pod: str) -> dict[str, Any]:
    """What the Pod's /readyz answers, from inside the Pod (a 503 still has its JSON body)."""
    fetch = (
        "import urllib.error, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=5).read().decode())\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.read().decode())\n"
    )
    return dict(json.loads(exec_in(node, release, "python3", "-c", fetch, pod=pod)))


def leading(node: nodetier.Node, release: Release) -> dict[str, bool]:
    """Which live operator Pods say they lead (their /readyz), by name."""
    return {name: readyz(node, release, name)["leading"] for name in operator_pods(node, release)}


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
    assert deployment["status"]["readyReplicas"] == 2
    pods = operator_pods(node, release)
    assert len(pods) == 2, sorted(pods)
    for name, pod in pods.items():
        [container] = pod["spec"]["containers"]
        assert container["image"] == node.operator_image.name
        assert container["imagePullPolicy"] == "IfNotPresent"
        [status] = pod["status"]["containerStatuses"]
        assert status["ready"] is True, name
        assert "running" in status["state"], status["state"]
        assert status["restartCount"] == 0
        assert status["image"].endswith(node.operator_image.name.split("/", 1)[1])
        # One node: the anti-affinity is a preference, so both replicas still schedule.
        assert pod["spec"]["nodeName"] == node.local.node_name
        # Ready means the readiness probe passed; the kubelet counts the liveness probe's successes too.
        harness.wait_until(
            lambda name=name: kubelet_probe_successes(node, name, "Liveness") >= 2,  # type: ignore[misc]
            timeout=30,
            interval=0.5,
            what=f"the kubelet to count two successful liveness probes of {name}",
        )
        assert kubelet_probe_successes(node, name, "Readiness") >= 1
    pods = operator_pods(node, release)
    restarts = {name: pod["status"]["containerStatuses"][0]["restartCount"] for name, pod in pods.items()}
    assert restarts == dict.fromkeys(pods, 0)


def test_two_ready_replicas_of_which_exactly_one_leads(node: nodetier.Node, release: Release) -> None:
    pods = operator_pods(node, release)
    assert len(pods) == 2, sorted(pods)
    lease = node.cluster.get("lease", RELEASE, release.namespace)
    assert lease is not None
    holder = lease["spec"]["holderIdentity"]
    assert holder in pods
    assert lease["spec"]["leaseDurationSeconds"] == 6
    # Each Pod says on /readyz whether it leads; both are Ready, and only the Lease holder leads.
    answers = {name: readyz(node, release, name) for name in pods}
    assert {name: answer["leading"] for name, answer in answers.items()} == {name: name == holder for name in pods}
    assert all(answer["ready"] for answer in answers.values()), answers
    # The holder keeps renewing its Lease: renewTime moves, the holder stays.
    harness.wait_until(
        lambda: (
            (node.cluster.get("lease", RELEASE, release.namespace) or {}).get("spec", {}).get("renewTime")
            != lease["spec"]["renewTime"]
        ),
        timeout=10,
        interval=0.5,
        what="the leader to renew its Lease",
    )
    assert lease_holder(node, release) == holder
    budget = node.cluster.get("poddisruptionbudget", RELEASE, release.namespace)
    assert budget is not None
    harness.wait_until(
        lambda: (
            (node.cluster.get("poddisruptionbudget", RELEASE, release.namespace) or {})
            .get("status", {})
            .get("disruptionsAllowed")
            == 1
        ),
        timeout=30,
        interval=0.5,
        what="the PodDisruptionBudget to allow one disruption",
    )


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
    lease_binding = node.cluster.get("rolebinding", f"{RELEASE}-leader-election", release.namespace)
    assert lease_binding is not None
    assert lease_binding["subjects"] == json.loads(binding)["subjects"]
    token = exec_in(node, release, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["sub"] == release.user

    node.cluster.kubectl("apply", "-n", release.runs, "-f", str(harness.EXAMPLES / "hello.yaml"))
    status = node.cluster.wait_phase("hello", release.runs, timeout=60)["status"]
    assert status["phase"] == "Succeeded", status
    # Run by the leader, not by the standby.
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


def test_rollout_restart_of_two_replicas_loses_no_run(
    node: nodetier.Node, release: Release, tmp_path: pathlib.Path
) -> None:
    watch = harness.WatchRecorder(node.cluster, release.runs, tmp_path)
    try:
        names = [f"inflight-{i}" for i in range(3)]
        for name in names:
            # Long enough to still run when the rollout stops their leader; retried on the next one.
            node.cluster.apply(harness.echo_run(name, "wait", delay=45, retry=RETRY_HANDOVERS), release.runs)
        for name in names:
            node.cluster.wait_phase(name, release.runs, "Running", timeout=60)
        old_pods = set(operator_pods(node, release))
        old_leader = operator_pod(node, release)["metadata"]["name"]

        node.cluster.kubectl("rollout", "restart", f"deployment/{RELEASE}", "-n", release.namespace)
        # Created while the Pods are replaced: whichever Pod leads then runs it.
        node.cluster.apply(harness.echo_run("during-restart", "hello"), release.runs)
        node.cluster.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", release.namespace, "--timeout=180s")

        # Two new Pods, both Ready; exactly one of them leads.
        new_pods = operator_pods(node, release)
        assert len(new_pods) == 2, sorted(new_pods)
        assert not set(new_pods) & old_pods, (sorted(new_pods), sorted(old_pods))
        harness.wait_until(lambda: lease_holder(node, release) in new_pods, timeout=30, what="a new Pod to lead")
        holder = lease_holder(node, release)
        assert leading(node, release) == {name: name == holder for name in new_pods}

        late = node.cluster.wait_phase("during-restart", release.runs, timeout=90)["status"]
        assert late["phase"] == "Succeeded", late
        retried = 0
        for name in names:
            status = node.cluster.wait_phase(name, release.runs, timeout=300)["status"]
            attempts = status["attempts"]
            assert attempts[0]["instance"] == old_leader, attempts
            # Every attempt but the last was cut short by a handover, and tried again.
            for attempt in attempts[:-1]:
                assert attempt["reason"] in SHUTDOWN_REASONS, attempts
            retried += len(attempts) > 1
            if status["phase"] != "Succeeded":
                # Only a run whose retries ran out may end failed, and only for a handover.
                assert (status["phase"], status["reason"]) in {("Failed", r) for r in SHUTDOWN_REASONS}, status
                assert len(attempts) == RETRY_LIMIT + 1, attempts
            else:
                assert status["output"] == "echo: wait", status
            terminal_events = [e["type"] for e in status["events"] if e["type"] in TERMINAL_EVENTS]
            assert len(terminal_events) == 1, status["events"]
        # The rollout stopped the leader while the runs were in flight: the handover was exercised.
        assert retried, "no run was in flight when its leader stopped"
        items = json.loads(node.cluster.kubectl("get", "agentruns", "-n", release.runs, "-o", "json").stdout)["items"]
        assert [i["metadata"]["name"] for i in items if i["status"]["phase"] not in harness.TERMINAL] == []
        # Finished runs are labelled once released, so the selector lists the runs still in progress: none.
        harness.wait_until(
            lambda: (
                not node.cluster.kubectl(
                    "get", "agentruns", "-n", release.runs, "-l", "!agentrun.dev/finished", "-o", "name"
                ).stdout.strip()
            ),
            timeout=30,
            interval=0.5,
            what="every run to carry agentrun.dev/finished",
        )
        # No run was ever recorded terminal twice (the watch saw every version).
        for name in [*names, "during-restart"]:
            versions = watch.versions(name)
            ends = {(v["phase"], v.get("completionTime")) for v in versions if v.get("phase") in harness.TERMINAL}
            assert len(ends) == 1, (name, ends)
    finally:
        watch.stop()


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
