"""Pod mode on a real node: each attempt runs in its own runner Pod, from the Dockerfile's image.

The chart is installed for one watched namespace (namespaced RBAC) and its Deployment is
scaled to zero: the operator under test runs as a process on this machine, authenticated
as the chart's ServiceAccount, so the tests can SIGKILL it and start the next instance.
The runs' namespace enforces the `restricted` Pod Security profile.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import pathlib
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import harness
import nodetier
import processes

pytestmark = pytest.mark.node

RELEASE = "agentrun-pods"
CRDS = ("agentruns.agentrun.dev", "agents.agentrun.dev", "agentthreads.agentrun.dev")
POD = {"mode": "pod"}
START_TIMEOUT_SECONDS = 6


@dataclasses.dataclass
class PodMode:
    node: nodetier.Node
    namespace: str  # the release's own
    runs: str  # watched, restricted
    kubeconfig: pathlib.Path  # the chart's ServiceAccount
    log_dir: pathlib.Path
    operators: list[processes.OperatorProcess] = dataclasses.field(default_factory=list)

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{RELEASE}"

    @property
    def cluster(self) -> harness.Cluster:
        return self.node.cluster

    def operator(self, **settings: Any) -> processes.OperatorProcess:
        """A new operator instance under the chart's identity, watching the runs' namespace."""
        defaults: dict[str, Any] = {
            "runner_image": self.node.operator_image.name,
            "runner_start_timeout_seconds": START_TIMEOUT_SECONDS,
            # The chart's Lease Role covers its own namespace; the chart's Deployment is scaled to 0.
            "lease_namespace": self.namespace,
            "lease_name": f"{RELEASE}-out-of-cluster",
            **harness.TEST_LEASE,
            "status_budget_bytes": 4096,
        }
        started = processes.OperatorProcess(
            kubeconfig=self.kubeconfig,
            namespaces=[self.runs],
            log_dir=self.log_dir,
            base_env=self.cluster.env(),
            **{**defaults, **settings},
        )
        self.operators.append(started)
        return started.start()

    def pods_of(self, run: str) -> list[dict[str, Any]]:
        listed = self.cluster.kubectl("get", "pods", "-n", self.runs, "-l", f"agentrun.dev/run={run}", "-o", "json")
        return list(json.loads(listed.stdout)["items"])

    def writes_since(self, moment: str) -> list[dict[str, Any]]:
        """Writes to AgentRuns in the runs' namespace by the chart's identity, received after ``moment``."""
        assert self.cluster.local is not None
        return [
            entry
            for entry in self.cluster.local.audit_events()
            if entry["user"]["username"] == self.user
            and entry.get("stage") == "ResponseComplete"
            and (entry.get("objectRef") or {}).get("resource") == "agentruns"
            and entry["objectRef"].get("namespace") == self.runs
            and entry["requestReceivedTimestamp"] > moment
        ]


@pytest.fixture(scope="module")
def pod_mode(node: nodetier.Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodMode]:
    suffix = secrets.token_hex(3)
    handle = PodMode(
        node, f"agentrun-pods-{suffix}", f"pod-runs-{suffix}", pathlib.Path(), tmp_path_factory.mktemp("pod-mode")
    )
    cluster = node.cluster
    cluster.kubectl("create", "namespace", handle.runs)
    cluster.kubectl("label", "namespace", handle.runs, "pod-security.kubernetes.io/enforce=restricted")
    # The controller-manager creates it within seconds; creating it here saves the wait.
    cluster.kubectl("create", "serviceaccount", "default", "-n", handle.runs, check=False)
    try:
        node.helm.run(
            "install", RELEASE, str(harness.ROOT / "charts" / "agentrun-operator"),
            "--namespace", handle.namespace, "--create-namespace",
            *node.operator_values,
            "--set", f"fullnameOverride={RELEASE}",
            "--set", "rbac.scope=namespaced",
            "--set", f"watchNamespaces={{{handle.runs}}}",
        )  # fmt: skip
        # The operator under test is a process on this machine with the chart's identity.
        cluster.kubectl("scale", "deployment", RELEASE, "-n", handle.namespace, "--replicas=0")
        harness.wait_until(
            lambda: not cluster.kubectl("get", "pods", "-n", handle.namespace, "-o", "name").stdout.strip(),
            timeout=60,
            what="the chart's operator Pod to be gone",
        )
        handle.kubeconfig = cluster.service_account_kubeconfig(
            handle.namespace, RELEASE, handle.log_dir / "chart-identity.kubeconfig"
        )
        yield handle
    finally:
        for started in handle.operators:
            started.stop()
        node.helm.run("uninstall", RELEASE, "--namespace", handle.namespace, "--wait", check=False)
        runs = json.loads(cluster.kubectl("get", "agentruns", "-A", "-o", "json", check=False).stdout or "{}")
        for item in runs.get("items", []):
            if item["metadata"].get("finalizers"):  # only if a test failed before its run ended
                cluster.kubectl(
                    "patch", "agentrun", item["metadata"]["name"], "-n", item["metadata"]["namespace"],
                    "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--timeout=60s", check=False)
        for created in (handle.namespace, handle.runs):
            cluster.kubectl("delete", "namespace", created, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(pod_mode: PodMode) -> processes.OperatorProcess:
    return pod_mode.operator()


def pod_run(name: str, prompt: str | list[str] = "hello", *, delay: float = 0.0, **spec: Any) -> dict[str, Any]:
    return harness.echo_run(name, prompt, delay=delay, runner=POD, **spec)


def terminated(pod_mode: PodMode, run: str) -> dict[str, Any]:
    """The runner container's terminated state (the run records its result as soon as the runner prints it)."""

    def ended() -> dict[str, Any] | None:
        pods = pod_mode.pods_of(run)
        states = [s.get("state", {}) for pod in pods for s in pod.get("status", {}).get("containerStatuses", [])]
        return states[0]["terminated"] if len(pods) == 1 and states and "terminated" in states[0] else None

    return dict(harness.wait_until(ended, timeout=30, interval=0.3, what=f"the runner container of {run} to end"))


def assert_no_duplicate_events(status: dict[str, Any]) -> None:
    events = status["events"]
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)), ids
    keys = [(event["type"], event["time"]) for event in events]
    assert len(keys) == len(set(keys)), keys
    assert status["eventCount"] == ids[-1]


def test_a_pod_mode_run_succeeds_in_a_restricted_pod_without_a_token(
    pod_mode: PodMode, operator: processes.OperatorProcess
) -> None:
    cluster = pod_mode.cluster
    cluster.apply(pod_run("hello", "hello from a pod"), pod_mode.runs)
    body = cluster.wait_phase("hello", pod_mode.runs, timeout=90)
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == "echo: hello from a pod"
    assert status["usage"]["requests"] == 1
    assert [event["type"] for event in status["events"]] == ["run_started", "model_request", "run_succeeded"]
    assert_no_duplicate_events(status)
    [attempt] = status["attempts"]
    assert attempt["mode"] == "pod"
    assert status["runner"]["mode"] == "pod"

    [pod] = pod_mode.pods_of("hello")
    assert pod["metadata"]["name"] == attempt["podName"]
    [owner] = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("AgentRun", body["metadata"]["uid"])
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] > 0
    [container] = spec["containers"]
    assert container["image"] == pod_mode.node.operator_image.name
    assert "env" not in container  # no Secret value can travel in the environment
    assert container["args"] == ["runner"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The namespace enforces `restricted`: the API server admitted the Pod, and the kubelet ran it.
    labels = json.loads(cluster.kubectl("get", "namespace", pod_mode.runs, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    ended = terminated(pod_mode, "hello")
    assert ended["exitCode"] == 0
    # What the runner found inside the container: no API token was mounted.
    summary = json.loads(ended["message"])
    assert summary == {
        "outcome": "succeeded",
        "events": 1,
        "tokenMounted": False,
        "usage": status["usage"],
    }
    # The runner's input is a Secret the run owns; no Secret value is in the Pod's spec.
    [volume] = [v for v in spec["volumes"] if v["name"] == "input"]
    secret = cluster.get("secret", volume["secret"]["secretName"], pod_mode.runs)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    document = json.loads(base64.b64decode(secret["data"]["run.json"]))
    assert document["spec"]["composition"]["layers"][1]["config"]["user"] == "hello from a pod"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param(pod_run("blank", ["", " "]), "run.user_prompts must not be empty", id="blank-prompts"),
        pytest.param(
            harness.agent_run(
                "recursive",
                [
                    {"name": "llm", "type": "model.echo"},
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "go"}},
                    {
                        "name": "output",
                        "type": "agentrun.output",
                        "config": {
                            "jsonSchema": {
                                "type": "object",
                                "properties": {"root": {"$ref": "#/$defs/Node"}},
                                "$defs": {
                                    "Node": {
                                        "type": "object",
                                        "properties": {
                                            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                                        },
                                    }
                                },
                            }
                        },
                    },
                ],
                runner=POD,
            ),
            "Recursive $defs refs are not supported for structured output exposure.",
            id="recursive-defs",
        ),
        pytest.param(
            harness.agent_run(
                "unregistered",
                [
                    {"name": "llm", "type": "model.echo"},
                    {"name": "prompt", "type": "custom.prompt", "config": {"user": "go"}},
                ],
                runner=POD,
            ),
            "Layer type id 'custom.prompt' is not registered.",
            id="unregistered-layer-type",
        ),
        pytest.param(
            pod_run(
                "closed",
                "again",
                sessionSnapshot={
                    "schemaVersion": 1,
                    "layers": [
                        {"name": "llm", "lifecycleState": "suspended", "runtimeState": {}},
                        {"name": "prompt", "lifecycleState": "closed", "runtimeState": {}},
                    ],
                },
            ),
            "Layer 'prompt' is closed; CLOSED snapshots cannot be entered.",
            id="closed-snapshot",
        ),
    ],
)
def test_the_seed_messages_come_from_the_runner_pod(
    pod_mode: PodMode, operator: processes.OperatorProcess, manifest: dict[str, Any], message: str
) -> None:
    name = manifest["metadata"]["name"]
    pod_mode.cluster.apply(manifest, pod_mode.runs)
    status = pod_mode.cluster.wait_phase(name, pod_mode.runs, timeout=90)["status"]
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "InvalidRequest", message)
    assert [event["type"] for event in status["events"]] == ["run_started", "run_failed"]
    # The failure was the runner's: its Pod ran and ended with a result.
    summary = json.loads(terminated(pod_mode, name)["message"])
    assert (summary["outcome"], summary["reason"], summary["message"]) == ("failed", "InvalidRequest", message)


def test_a_conversation_continues_across_pods(pod_mode: PodMode, operator: processes.OperatorProcess) -> None:
    cluster = pod_mode.cluster
    cluster.apply(pod_run("turn-1", "My favourite colour is teal."), pod_mode.runs)
    first = cluster.wait_phase("turn-1", pod_mode.runs, timeout=90)["status"]
    assert first["phase"] == "Succeeded", first
    cluster.apply(
        pod_run("turn-2", "What is my favourite colour?", sessionSnapshot=first["sessionSnapshot"]), pod_mode.runs
    )
    second = cluster.wait_phase("turn-2", pod_mode.runs, timeout=90)["status"]
    assert second["phase"] == "Succeeded", second
    # The echo model answers from the whole conversation its Pod was given.
    assert second["output"] == (
        "echo (turn 2): What is my favourite colour? | earlier you said: My favourite colour is teal."
    )
    assert pod_mode.pods_of("turn-1")[0]["metadata"]["name"] != pod_mode.pods_of("turn-2")[0]["metadata"]["name"]


def test_the_pod_mode_example_succeeds(pod_mode: PodMode, operator: processes.OperatorProcess) -> None:
    pod_mode.cluster.kubectl("apply", "-n", pod_mode.runs, "-f", str(harness.EXAMPLES / "pod-mode.yaml"))
    status = pod_mode.cluster.wait_phase("pod-mode", pod_mode.runs, timeout=90)["status"]
    assert (status["phase"], status["output"]) == ("Succeeded", "echo: Say hello from a Pod of your own.")
    [pod] = pod_mode.pods_of("pod-mode")
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"memory": "512Mi"}


def test_structured_output_from_a_pod(pod_mode: PodMode, operator: processes.OperatorProcess) -> None:
    manifest = harness.example("structured-output.yaml")
    manifest["spec"]["runner"] = POD
    name = manifest["metadata"]["name"]
    pod_mode.cluster.apply(manifest, pod_mode.runs)
    status = pod_mode.cluster.wait_phase(name, pod_mode.runs, timeout=90)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"]["severity"] in ("low", "medium", "high")
    assert len(status["output"]["bullets"]) >= 3


def test_an_output_over_the_budget_is_offloaded(pod_mode: PodMode, operator: processes.OperatorProcess) -> None:
    prompt = "incident " * 600  # the echo answer is ~5.4 KB: over the 4 KiB budget
    pod_mode.cluster.apply(pod_run("big", prompt), pod_mode.runs)
    body = pod_mode.cluster.wait_phase("big", pod_mode.runs, timeout=90)
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert "output" not in status
    ref = status["outputRef"]
    secret = pod_mode.cluster.get("secret", ref["name"], pod_mode.runs)
    assert secret is not None
    assert json.loads(base64.b64decode(secret["data"][ref["key"]])) == "echo: " + prompt


def run_seconds(status: dict[str, Any]) -> float:
    """Admission to the recorded end, by the operator's own timestamps."""
    start = datetime.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
    end = datetime.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def test_pod_mode_latency_beside_task_mode(
    pod_mode: PodMode, operator: processes.OperatorProcess, request: pytest.FixtureRequest
) -> None:
    """What a Pod costs: the same echo run, one at a time, in each mode (the README quotes these figures)."""
    durations: dict[str, list[float]] = {"task": [], "pod": []}
    for round_ in range(3):
        for mode in ("task", "pod"):
            name = f"latency-{mode}-{round_}"
            pod_mode.cluster.apply(harness.echo_run(name, "how long?", runner={"mode": mode}), pod_mode.runs)
            status = pod_mode.cluster.wait_phase(name, pod_mode.runs, timeout=90)["status"]
            assert status["phase"] == "Succeeded", status
            durations[mode].append(run_seconds(status))
    task, pod = (sorted(durations[mode])[1] for mode in ("task", "pod"))
    harness.announce(
        request.config,
        f"node tier: admission to Succeeded, median of 3 echo runs: task mode {task:.2f}s, pod mode {pod:.2f}s "
        f"(image present on the node)",
    )
    assert task < pod < 60


def wait_pod_running(pod_mode: PodMode, run: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pods = pod_mode.pods_of(run)
        states = [s.get("state", {}) for pod in pods for s in pod.get("status", {}).get("containerStatuses", [])]
        return pods[0] if states and "running" in states[0] else None

    return harness.wait_until(running, timeout=60, interval=0.3, what=f"the runner Pod of {run} to run")


def test_deleting_a_run_stops_its_pod_and_records_cancelled(
    pod_mode: PodMode, operator: processes.OperatorProcess, tmp_path: pathlib.Path
) -> None:
    cluster = pod_mode.cluster
    watch = harness.WatchRecorder(cluster, pod_mode.runs, tmp_path)
    try:
        cluster.apply(pod_run("doomed", "wait", delay=300), pod_mode.runs)
        pod = wait_pod_running(pod_mode, "doomed")
        cluster.kubectl("delete", "agentrun", "doomed", "-n", pod_mode.runs, "--wait=false")
        harness.wait_until(
            lambda: "doomed" in {e["object"]["metadata"]["name"] for e in watch.events() if e["type"] == "DELETED"},
            timeout=60,
            what="the run to be deleted",
        )
        cancelled = [s for s in watch.versions("doomed") if s.get("phase") == "Cancelled"]
        assert cancelled, [s.get("phase") for s in watch.versions("doomed")]
        assert cancelled[-1]["reason"] == "Cancelled"
        assert cancelled[-1]["events"][-1]["type"] == "run_cancelled"
        harness.wait_until(
            lambda: not pod_mode.pods_of("doomed"), timeout=60, what=f"Pod {pod['metadata']['name']} to be gone"
        )
    finally:
        watch.stop()


def test_a_pod_over_its_memory_limit_fails_naming_oomkilled(
    pod_mode: PodMode, operator: processes.OperatorProcess
) -> None:
    tiny = {"mode": "pod", "resources": {"requests": {"memory": "24Mi"}, "limits": {"memory": "24Mi"}}}
    pod_mode.cluster.apply(harness.echo_run("hungry", "hello", runner=tiny), pod_mode.runs)
    status = pod_mode.cluster.wait_phase("hungry", pod_mode.runs, timeout=90)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "PodFailed"), status
    assert "OOMKilled" in status["message"], status["message"]
    assert status["attempts"][0]["podName"] in status["message"]


def test_an_image_that_does_not_exist_fails_within_the_bound(
    pod_mode: PodMode, operator: processes.OperatorProcess
) -> None:
    image = "registry.invalid/agentrun/no-such-runner:0"
    started = time.monotonic()
    pod_mode.cluster.apply(harness.echo_run("no-image", "hello", runner={"mode": "pod", "image": image}), pod_mode.runs)
    status = pod_mode.cluster.wait_phase("no-image", pod_mode.runs, timeout=60)["status"]
    elapsed = time.monotonic() - started
    assert (status["phase"], status["reason"]) == ("Failed", "ImageUnavailable"), status
    assert image in status["message"]
    assert elapsed < START_TIMEOUT_SECONDS + 20, elapsed
    harness.wait_until(lambda: not pod_mode.pods_of("no-image"), timeout=30, what="the unpullable Pod to be deleted")


def test_a_pod_lost_with_its_node_fails_the_run_podfailed(
    pod_mode: PodMode, operator: processes.OperatorProcess
) -> None:
    """One node only, so node loss is staged: the kubelet stops (the node goes NotReady), then the lost Pod
    is force-deleted, as the Pod garbage collector or an administrator does for Pods of a dead node."""
    cluster, local = pod_mode.cluster, pod_mode.node.local
    cluster.apply(pod_run("stranded", "wait", delay=300), pod_mode.runs)
    pod = wait_pod_running(pod_mode, "stranded")["metadata"]["name"]
    local.stop_kubelet()
    try:
        unknown = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
        }
        cluster.kubectl(
            "patch", "node", local.node_name, "--subresource=status", "--type=strategic",
            "-p", json.dumps({"status": {"conditions": [unknown]}}),
        )  # fmt: skip
        cluster.kubectl("delete", "pod", pod, "-n", pod_mode.runs, "--grace-period=0", "--force")
        status = cluster.wait_phase("stranded", pod_mode.runs, timeout=60)["status"]
    finally:
        local.start_kubelet()
    assert (status["phase"], status["reason"]) == ("Failed", "PodFailed"), status
    assert pod in status["message"]
    assert "lost with its node" in status["message"]


def test_sigkill_of_the_operator_mid_flight_loses_no_pod_mode_run(
    pod_mode: PodMode, operator: processes.OperatorProcess
) -> None:
    operator.stop()  # the module's operator: this test starts its own two instances (it runs last)
    cluster = pod_mode.cluster
    first = pod_mode.operator()
    names = [f"flight-{i:02d}" for i in range(20)]
    for name in names:
        cluster.apply(pod_run(name, f"answer {name}", delay=45), pod_mode.runs)

    def recorded_progress() -> bool:
        # Every runner has started its model request, and the operator has recorded it.
        statuses = [cluster.run_status(name, pod_mode.runs) for name in names]
        return all(
            status.get("phase") == "Running"
            and [event["type"] for event in status.get("events", [])] == ["run_started", "model_request"]
            for status in statuses
        )

    harness.wait_until(recorded_progress, timeout=150, interval=0.5, what="20 runs to record their model request")
    killed_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)

    # The next instance leads once it has seen the Lease unrenewed for its duration, then adopts the Pods.
    second = pod_mode.operator()
    try:
        for name in names:
            status = cluster.wait_phase(name, pod_mode.runs, timeout=180)["status"]
            assert (status["phase"], status["output"]) == ("Succeeded", f"echo: answer {name}"), status
            assert [event["type"] for event in status["events"]] == ["run_started", "model_request", "run_succeeded"]
            assert_no_duplicate_events(status)
            [attempt] = status["attempts"]
            assert attempt["instance"] == first.instance  # the attempt that ran is the one the first instance started
            assert status["runner"]["instance"] == second.instance
            cluster.wait_released(name, pod_mode.runs)
        # The new instance wrote each run three times: its adoption, its end, and the finalizer's release.
        writes = pod_mode.writes_since(killed_at)
        per_run: dict[str, list[tuple[str, str]]] = {}
        for entry in writes:
            per_run.setdefault(entry["objectRef"]["name"], []).append(
                (entry["verb"], entry["objectRef"].get("subresource", ""))
            )
        expected = [("patch", "status"), ("patch", "status"), ("patch", "")]
        assert {name: sorted(per_run.get(name, [])) for name in names} == {name: sorted(expected) for name in names}
        assert set(per_run) == set(names)
    finally:
        second.stop()
