"""`helm install` into the real API server, then the operator under the chart's ServiceAccount token.

The release is namespaced: a Role and RoleBinding in each of two watched namespaces, one
for leader election in the release namespace, and nothing cluster-wide. The operator
process authenticates with a token of the release's ServiceAccount (TokenRequest API), so
what it can do is exactly what the chart grants.

The session applied the CRD from crds/ before this module; the release adopts it (Helm's
ownership label and annotations), installs it with crds.install=true, and leaves it behind
on uninstall (crds.keep). The tests run in file order: the last one uninstalls.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fake_llm
import harness
import helmchart

pytestmark = pytest.mark.chart

RELEASE = "agentrun-operator"
CRD = "agentruns.agentrun.dev"
CRDS = (CRD, "agents.agentrun.dev", "agentthreads.agentrun.dev")
POLICY = f"{RELEASE}-secret-references"
API_KEY = "sk-chart-test-9c8b7a"


@dataclasses.dataclass
class Release:
    namespace: str
    runs: str  # watched, with the full Role
    denied: str  # watched; a test removes one permission from its Role
    service_account: str
    install_output: str
    uninstalled: bool = False

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(scope="module")
def release(cluster: harness.Cluster, helm: helmchart.Helm) -> Iterator[Release]:
    suffix = secrets.token_hex(3)
    namespace, runs, denied = (f"{stem}-{suffix}" for stem in ("agentrun-system", "chart-runs", "chart-denied"))
    for watched in (runs, denied):
        cluster.kubectl("create", "namespace", watched)
    # Hand the CRDs that the session applied over to this release, as the README tells users to.
    cluster.kubectl("label", "crd", *CRDS, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        *CRDS,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )
    handle = Release(namespace, runs, denied, RELEASE, "")
    try:
        result = helm.run(
            "install",
            RELEASE,
            str(helmchart.CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--set",
            "rbac.scope=namespaced",
            "--set",
            f"watchNamespaces={{{runs},{denied}}}",
            "--set",
            "crds.install=true",
            "--set",
            "operator.shutdownGraceSeconds=2",
        )
        handle.install_output = result.stdout
        yield handle
    finally:
        if not handle.uninstalled:
            helm.run("uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)
        # Whatever happened here, later tests of the session need the CRD.
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(harness.ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", *CRDS)
        for created in (namespace, runs, denied):
            cluster.kubectl("delete", "namespace", created, "--wait=false", check=False)


def chart_settings(cluster: harness.Cluster, release: Release) -> tuple[list[str], dict[str, str]]:
    """Watched namespaces and AGENTRUN_* settings, read from the installed Deployment."""
    deployment = cluster.get("deployment", RELEASE, release.namespace)
    assert deployment is not None
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    namespaces = env.pop("AGENTRUN_NAMESPACES").split(",")
    # The test process picks free ports: several operators may run on this machine at once.
    for local in ("AGENTRUN_LIVENESS_PORT", "AGENTRUN_METRICS_PORT"):
        env.pop(local)
    return namespaces, {name.removeprefix("AGENTRUN_").lower(): value for name, value in env.items()}


@pytest.fixture
def operator_as_release(
    cluster: harness.Cluster, release: Release, tmp_path: pathlib.Path
) -> Iterator[Callable[..., harness.OperatorProcess]]:
    """Start `agentrun operator` with the chart's settings and the release ServiceAccount's token."""
    started: list[harness.OperatorProcess] = []

    def start(**overrides: Any) -> harness.OperatorProcess:
        namespaces, settings = chart_settings(cluster, release)
        process = harness.OperatorProcess(cluster, namespaces, tmp_path, **{**settings, **overrides})
        kubeconfig = cluster.service_account_kubeconfig(
            release.namespace, release.service_account, tmp_path / f"sa-{len(started)}.kubeconfig"
        )
        process.env["KUBECONFIG"] = str(kubeconfig)
        # As the Downward API tells the Pod: the Lease is in the release namespace, where the chart grants it.
        process.env["POD_NAMESPACE"] = release.namespace
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def notes_commands(install_output: str) -> tuple[str, list[str]]:
    """From the install notes: the shell snippet that creates the first run, and the commands that follow it."""
    notes = install_output.split("NOTES:", 1)[1]
    create = notes[notes.index("cat <<'YAML'") :]
    create = create[: create.index("\nYAML\n") + len("\nYAML\n")]
    follow = [
        line.strip() for line in notes.splitlines() if line.strip().startswith(("kubectl agentrun", "kubectl wait"))
    ]
    return create, follow


def shell(cluster: harness.Cluster, script: str) -> subprocess.CompletedProcess[str]:
    """Run a line a user would paste, with kubectl and the kubectl-agentrun plugin on PATH, as the admin."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
        check=False,
    )


def can_i(cluster: harness.Cluster, release: Release, verb: str, resource: str, namespace: str | None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={release.user}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    if "/" in resource:  # a subresource: status, log, exec, eviction
        parent, subresource = resource.split("/", 1)
        args[3:4] = [parent, f"--subresource={subresource}"]
    result = cluster.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def test_install_creates_namespaced_rbac_and_adopts_the_crd(cluster: harness.Cluster, release: Release) -> None:
    for watched in (release.runs, release.denied):
        assert cluster.get("role", RELEASE, watched) is not None
        binding = cluster.get("rolebinding", RELEASE, watched)
        assert binding is not None
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}
        ]
    assert cluster.get("serviceaccount", release.service_account, release.namespace) is not None
    lease_binding = cluster.get("rolebinding", f"{RELEASE}-leader-election", release.namespace)
    assert lease_binding is not None
    assert lease_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}
    ]
    assert cluster.get("poddisruptionbudget", RELEASE, release.namespace) is not None
    assert cluster.get("deployment", RELEASE, release.namespace) is not None
    assert cluster.get("service", f"{RELEASE}-metrics", release.namespace) is not None
    assert cluster.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    crd = json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)
    annotations = crd["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert annotations["meta.helm.sh/release-name"] == RELEASE
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    # The admission policy guards exactly the watched namespaces.
    assert cluster.get("validatingadmissionpolicy", POLICY, "") is not None
    policy_binding = cluster.get("validatingadmissionpolicybinding", POLICY, "")
    assert policy_binding is not None
    [selector] = policy_binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert sorted(selector["values"]) == sorted([release.runs, release.denied])
    # The install notes show a first run in a watched namespace and how to follow it.
    assert f"kubectl agentrun events hello -n {release.runs} --follow" in release.install_output
    assert f"kubectl wait --for=condition=Succeeded ar/hello -n {release.runs}" in release.install_output


ALLOWED = [
    ("get", "agentruns.agentrun.dev"),
    ("list", "agentruns.agentrun.dev"),
    ("watch", "agentruns.agentrun.dev"),
    ("patch", "agentruns.agentrun.dev"),
    ("delete", "agentruns.agentrun.dev"),
    ("patch", "agentruns.agentrun.dev/status"),
    ("get", "agents.agentrun.dev"),
    ("watch", "agentthreads.agentrun.dev"),
    ("patch", "agentthreads.agentrun.dev/status"),
    ("get", "secrets"),
    ("create", "secrets"),
    ("patch", "secrets"),
    ("create", "events"),
    # Pod mode: runner Pods and their logs, nothing more.
    ("create", "pods"),
    ("get", "pods"),
    ("list", "pods"),
    ("watch", "pods"),
    ("delete", "pods"),
    ("get", "pods/log"),
]
DENIED = [
    ("create", "agentruns.agentrun.dev"),
    ("update", "agentruns.agentrun.dev"),
    ("update", "agentruns.agentrun.dev/status"),
    ("list", "agents.agentrun.dev"),
    ("create", "agentthreads.agentrun.dev"),
    ("delete", "agentthreads.agentrun.dev"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("delete", "secrets"),
    ("get", "configmaps"),
    ("update", "pods"),
    ("patch", "pods"),
    ("create", "pods/exec"),
    ("create", "pods/eviction"),
    ("patch", "pods/status"),
    ("get", "leases.coordination.k8s.io"),
    ("create", "events.events.k8s.io"),
]
# Leader election: in the release namespace only.
LEASE_ALLOWED = [
    ("get", "leases.coordination.k8s.io"),
    ("create", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
]
LEASE_DENIED = [
    ("list", "leases.coordination.k8s.io"),
    ("watch", "leases.coordination.k8s.io"),
    ("patch", "leases.coordination.k8s.io"),
    ("delete", "leases.coordination.k8s.io"),
]
CLUSTER_DENIED = [
    ("list", "namespaces"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "agentruns.agentrun.dev"),
    ("get", "secrets"),
    ("get", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
]


def test_service_account_may_do_exactly_what_the_rules_say(cluster: harness.Cluster, release: Release) -> None:
    for verb, resource in ALLOWED:
        assert can_i(cluster, release, verb, resource, release.runs), f"{verb} {resource} should be allowed"
    for verb, resource in DENIED:
        assert not can_i(cluster, release, verb, resource, release.runs), f"{verb} {resource} should be denied"
    for verb, resource in CLUSTER_DENIED:
        assert not can_i(cluster, release, verb, resource, None), f"cluster-wide {verb} {resource}"
    # Namespaces that are not watched, the release's own included, grant nothing on runs.
    for verb, resource in ALLOWED:
        assert not can_i(cluster, release, verb, resource, release.namespace), f"{verb} {resource} outside"
    # The operator may hold its Lease in its own namespace, and write Leases nowhere else.
    for verb, resource in LEASE_ALLOWED:
        assert can_i(cluster, release, verb, resource, release.namespace), f"{verb} {resource} in its namespace"
        for elsewhere in (release.runs, release.denied):
            assert not can_i(cluster, release, verb, resource, elsewhere), f"{verb} {resource} in {elsewhere}"
    for verb, resource in LEASE_DENIED:
        assert not can_i(cluster, release, verb, resource, release.namespace), f"{verb} {resource}"


def test_operator_runs_agentruns_under_exactly_the_chart_rbac(
    cluster: harness.Cluster, release: Release, operator_as_release: Callable[..., harness.OperatorProcess]
) -> None:
    llm = fake_llm.FakeLLM().start()
    try:
        cluster.kubectl(
            "create", "secret", "generic", "llm-credentials", "-n", release.runs, f"--from-literal=api-key={API_KEY}"
        )
        # A small budget so that a long answer goes to a Secret the operator creates.
        operator = operator_as_release(status_budget_bytes=4096)
        # The first run exactly as the install notes tell users to create it.
        create, follow = notes_commands(release.install_output)
        assert len(follow) == 2, follow
        created = shell(cluster, create)
        assert created.returncode == 0, created.stderr
        cluster.apply(harness.echo_run("big", "incident " * 600), release.runs)
        openai = harness.agent_run(
            "with-key",
            [
                {
                    "name": "llm",
                    "type": "model.openai",
                    "config": {
                        "model": "ok",
                        "baseURL": llm.base_url,
                        "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"},
                    },
                },
                {"name": "prompt", "type": "plain.prompt", "config": {"user": "Summarize incident 42."}},
            ],
        )
        cluster.apply(openai, release.runs)

        # ... and followed the way the notes say: both commands end with success.
        for command in follow:
            done = shell(cluster, command)
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
            assert "run_succeeded" in done.stdout or "condition met" in done.stdout, done.stdout
        hello = cluster.wait_phase("hello", release.runs)["status"]
        assert hello["phase"] == "Succeeded", hello
        assert hello["output"] == "echo: Say hello to the platform team."
        big = cluster.wait_phase("big", release.runs)["status"]
        assert big["phase"] == "Succeeded", big
        assert cluster.get("secret", big["outputRef"]["name"], release.runs) is not None  # secrets: create
        keyed = cluster.wait_phase("with-key", release.runs)["status"]
        assert keyed["phase"] == "Succeeded", keyed  # secrets: get
        assert llm.received[-1].authorization == f"Bearer {API_KEY}"

        def released(name: str) -> bool:
            body = cluster.get("agentrun", name, release.runs)
            return body is not None and not body["metadata"].get("finalizers")

        for name in ("hello", "big", "with-key"):
            # agentruns: patch. The finalizer is released right after the terminal status write.
            harness.wait_until(lambda name=name: released(name), what=f"{name} to lose its finalizer")
        harness.wait_until(
            lambda: any(e["reason"] == "Succeeded" for e in cluster.events_for("hello", release.runs)),
            what="the operator's Succeeded Event (events: create)",
        )
    finally:
        llm.stop()
    logs = operator.logs()
    assert "forbidden" not in logs.lower(), logs[-3000:]
    if cluster.local is not None:
        # Every write the ServiceAccount made was allowed (the audit log records writes only).
        writes = [e for e in cluster.local.audit_events() if e["user"]["username"] == release.user and "objectRef" in e]
        assert writes
        refused = [e for e in writes if e["responseStatus"]["code"] >= 400 and e["responseStatus"]["code"] != 409]
        assert not refused, refused
        kinds = {(e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource", "")) for e in writes}
        assert {
            ("patch", "agentruns", ""),
            ("patch", "agentruns", "status"),
            ("create", "secrets", ""),
            ("create", "events", ""),
            ("create", "leases", ""),  # the leader's Lease, in the release namespace
        } <= kinds
        lease_writes = {e["objectRef"].get("namespace") for e in writes if e["objectRef"]["resource"] == "leases"}
        assert lease_writes == {release.namespace}


def test_missing_permission_is_reported_not_silent(
    cluster: harness.Cluster, release: Release, operator_as_release: Callable[..., harness.OperatorProcess]
) -> None:
    role = cluster.get("role", RELEASE, release.denied)
    assert role is not None
    kept = [rule for rule in role["rules"] if rule["resources"] != ["agentruns/status"]]
    assert len(kept) == len(role["rules"]) - 1
    cluster.kubectl("patch", "role", RELEASE, "-n", release.denied, "--type=merge", "-p", json.dumps({"rules": kept}))
    harness.wait_until(
        lambda: not can_i(cluster, release, "patch", "agentruns.agentrun.dev/status", release.denied),
        what="the Role change to take effect",
    )
    operator = operator_as_release()
    try:
        cluster.apply(harness.echo_run("denied", "hello"), release.denied)

        def reported() -> str | None:
            lines = [line for line in operator.logs().splitlines() if "forbidden" in line.lower()]
            return next((line for line in lines if "agentruns/status" in line and "denied" in line), None)

        line = harness.wait_until(reported, timeout=30, what="the operator to log the missing permission")
        assert "patch" in line
        assert release.user in line
        # Nothing was recorded: the operator could not write status at all.
        assert "phase" not in cluster.run_status("denied", release.denied)
    finally:
        operator.stop()
        # The operator may have added its finalizer (it may patch agentruns) before failing on status.
        cluster.kubectl(
            "patch",
            "agentrun",
            "denied",
            "-n",
            release.denied,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
        )
        cluster.kubectl("delete", "agentrun", "denied", "-n", release.denied, "--wait=false")


def test_upgrade_changes_settings_keeps_the_crd_and_repairs_rbac_drift(
    cluster: harness.Cluster, helm: helmchart.Helm, release: Release
) -> None:
    crd_uid = json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)["metadata"]["uid"]
    helm.run(
        "upgrade",
        RELEASE,
        str(helmchart.CHART),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        "operator.maxConcurrentRuns=5",
    )
    namespaces, settings = chart_settings(cluster, release)
    assert sorted(namespaces) == sorted([release.runs, release.denied])
    assert settings["max_concurrent_runs"] == "5"
    assert settings["shutdown_grace_seconds"] == "2"  # reused
    assert json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)["metadata"]["uid"] == crd_uid
    # Every Role is back to the chart's rules, whatever was edited by hand (the test before removed one).
    for watched in (release.runs, release.denied):
        role = cluster.get("role", RELEASE, watched)
        assert role is not None
        assert role["rules"] == helmchart.EXPECTED_RULES


def test_uninstall_keeps_the_crd_and_the_runs(cluster: harness.Cluster, helm: helmchart.Helm, release: Release) -> None:
    before = json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)
    cluster.apply(harness.echo_run("survivor", "still here"), release.runs)
    result = helm.run("uninstall", RELEASE, "--namespace", release.namespace, "--wait")
    release.uninstalled = True
    assert "kept due to the resource policy" in result.stdout + result.stderr
    after = json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json").stdout)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "deletionTimestamp" not in after["metadata"]
    assert cluster.get("agentrun", "survivor", release.runs) is not None
    hello = cluster.get("agentrun", "hello", release.runs)
    if hello is not None:  # left by the test before, with its result
        assert hello["status"]["phase"] == "Succeeded"
    for kind, name, namespace in (
        ("deployment", RELEASE, release.namespace),
        ("serviceaccount", release.service_account, release.namespace),
        ("service", f"{RELEASE}-metrics", release.namespace),
        ("role", RELEASE, release.runs),
        ("rolebinding", RELEASE, release.denied),
        ("role", f"{RELEASE}-leader-election", release.namespace),
        ("poddisruptionbudget", RELEASE, release.namespace),
        ("validatingadmissionpolicy", POLICY, ""),
        ("validatingadmissionpolicybinding", POLICY, ""),
    ):
        assert cluster.get(kind, name, namespace) is None, f"{kind}/{name} survived helm uninstall"
