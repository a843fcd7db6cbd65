"""No confused deputy: the chart's admission policy on the real API server.

The operator may read every Secret in a watched namespace, so the chart's
ValidatingAdmissionPolicy admits an AgentRun only if the user who creates it may `get`
each Secret it references. Each test renders the policy with `helm template` for its own
namespace only (the binding selects watched namespaces), applies it as the admin, and
drives the API server as a ServiceAccount that may create AgentRuns but, unless a test
grants it, read no Secret. No operator runs: admission alone is under test.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

import harness
import helmchart

pytestmark = pytest.mark.chart

SECRET = "llm-credentials"
CREATOR = "run-creator"
CREATOR_VERBS = ["get", "list", "watch", "create", "update", "patch"]
CRD_SPEC = yaml.safe_load((harness.ROOT / "crds" / "agentrun.dev_agentruns.yaml").read_text())["spec"]["versions"][0][
    "schema"
]["openAPIV3Schema"]["properties"]["spec"]["properties"]


@dataclasses.dataclass
class Guarded:
    """A namespace under the policy, the admin, and a user who may create AgentRuns there."""

    namespace: str
    admin: harness.Cluster
    creator: harness.Cluster
    creator_name: str
    policy: str

    def apply(self, who: harness.Cluster, manifest: dict[str, Any], *extra: str) -> tuple[bool, str]:
        """``kubectl apply`` as ``who``: whether it was admitted, and kubectl's error output."""
        result = who.kubectl(
            "apply", "-n", self.namespace, *extra, "-f", "-", stdin=yaml.safe_dump(manifest), check=False
        )
        return result.returncode == 0, result.stderr.strip()

    def grant(self, rule: dict[str, Any], role: str) -> None:
        """Grant the creator one more RBAC rule in the namespace, and wait until it is in force."""
        self.admin.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": role},
                "rules": [rule],
            },
            self.namespace,
        )
        self.admin.kubectl(
            "create",
            "rolebinding",
            role,
            "-n",
            self.namespace,
            f"--role={role}",
            f"--serviceaccount={self.creator_name.removeprefix('system:serviceaccount:')}",
        )
        for name in rule.get("resourceNames", [""]):
            verb, resource = rule["verbs"][0], rule["resources"][0]
            check = ["auth", "can-i", verb, f"{resource}/{name}" if name else resource, "-n", self.namespace]
            harness.wait_until(
                lambda check=check: self.creator.kubectl(*check, check=False).stdout.strip() == "yes",
                what=f"{self.creator_name} to be granted {' '.join(check[2:4])}",
            )


def model_layer(secret: str, name: str = "llm") -> dict[str, Any]:
    config = {"model": "m", "baseURL": "https://llm.example/v1", "apiKeySecretRef": {"name": secret, "key": "k"}}
    return {"name": name, "type": "model.openai", "config": config}


def tools_layer(secret: str, name: str = "tools") -> dict[str, Any]:
    config = {"url": "https://mcp.example/mcp", "headersSecretRef": {"name": secret}}
    return {"name": name, "type": "tools.mcp", "config": config}


def echo_layer() -> dict[str, Any]:
    return {"name": "llm", "type": "model.echo"}


def prompt_layer() -> dict[str, Any]:
    return {"name": "prompt", "type": "plain.prompt", "config": {"user": "Summarize incident 42."}}


def run_with(name: str, layers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    manifest = harness.agent_run(name, layers)
    manifest["spec"].update(spec)
    return manifest


def install_policy(helm: helmchart.Helm, admin: harness.Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    """The chart's policy and binding, rendered to guard ``namespace`` only, applied as the admin."""
    rendered = helm.render({"watchNamespaces": [namespace], "rbac": {"create": False}}, release=release)
    objects = [obj for obj in rendered if obj["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(objects) == 2
    admin.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    return objects


@pytest.fixture
def guarded(
    cluster: harness.Cluster, helm: helmchart.Helm, namespace: str, tmp_path: pathlib.Path
) -> Iterator[Guarded]:
    cluster.kubectl("create", "serviceaccount", CREATOR, "-n", namespace)
    creator = cluster.as_user(cluster.service_account_kubeconfig(namespace, CREATOR, tmp_path / "creator.kubeconfig"))
    handle = Guarded(namespace, cluster, creator, f"system:serviceaccount:{namespace}:{CREATOR}", "")
    handle.grant(
        {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": CREATOR_VERBS}, "agentrun-creator"
    )
    cluster.kubectl("create", "secret", "generic", SECRET, "-n", namespace, "--from-literal=k=sk-not-for-you")
    objects = install_policy(helm, cluster, namespace, f"vap-{secrets.token_hex(3)}")
    handle.policy = objects[0]["metadata"]["name"]
    try:
        # The API server loads policies and bindings asynchronously: probe with a server-side dry run.
        probe = run_with("probe", [model_layer(SECRET), prompt_layer()])
        harness.wait_until(
            lambda: not handle.apply(creator, probe, "--dry-run=server")[0], what="the admission policy to take effect"
        )
        yield handle
    finally:
        for obj in objects:
            cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found")


def assert_refused_naming(guarded: Guarded, admitted: bool, error: str, secret: str, field: str) -> None:
    assert not admitted, f"the API server admitted a run referencing Secret {secret}"
    assert "forbidden" in error.lower(), error
    assert f"ValidatingAdmissionPolicy '{guarded.policy}'" in error, error
    assert f'may not get Secret "{secret}" in namespace {guarded.namespace}' in error, error
    assert guarded.creator_name in error, error
    assert field in error, error


REFERENCES = [
    pytest.param(
        lambda secret: run_with("ref", [model_layer(secret), prompt_layer()]),
        "spec.composition.layers[llm].config.apiKeySecretRef",
        id="apiKeySecretRef",
    ),
    pytest.param(
        lambda secret: run_with("ref", [echo_layer(), tools_layer(secret), prompt_layer()]),
        "spec.composition.layers[tools].config.headersSecretRef",
        id="headersSecretRef",
    ),
    pytest.param(
        lambda secret: run_with("ref", [echo_layer(), prompt_layer()], sessionSnapshotRef={"name": secret, "key": "k"}),
        "spec.sessionSnapshotRef",
        id="sessionSnapshotRef",
        marks=pytest.mark.skipif(
            "sessionSnapshotRef" not in CRD_SPEC, reason="the AgentRun CRD has no spec.sessionSnapshotRef yet"
        ),
    ),
]


@pytest.mark.parametrize(("manifest", "field"), REFERENCES)
def test_a_reference_to_a_secret_the_creator_cannot_read_is_refused_naming_it(
    guarded: Guarded, manifest: Any, field: str
) -> None:
    admitted, error = guarded.apply(guarded.creator, manifest(SECRET))
    assert_refused_naming(guarded, admitted, error, SECRET, field)
    assert guarded.admin.get("agentrun", "ref", guarded.namespace) is None
    # A Secret that does not exist is refused the same way: the policy asks RBAC, not the store.
    admitted, error = guarded.apply(guarded.creator, manifest("no-such-secret"))
    assert_refused_naming(guarded, admitted, error, "no-such-secret", field)


def test_get_on_that_one_secret_admits_the_run(guarded: Guarded) -> None:
    guarded.grant(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [SECRET]}, "read-llm-key"
    )
    admitted, error = guarded.apply(guarded.creator, run_with("keyed", [model_layer(SECRET), prompt_layer()]))
    assert admitted, error
    assert guarded.admin.get("agentrun", "keyed", guarded.namespace) is not None
    # The grant names one Secret: another one in the same run is still refused, and named alone.
    both = run_with("both", [model_layer(SECRET), tools_layer("mcp-headers"), prompt_layer()])
    admitted, error = guarded.apply(guarded.creator, both)
    assert_refused_naming(guarded, admitted, error, "mcp-headers", "layers[tools].config.headersSecretRef")
    assert f'"{SECRET}"' not in error


def test_a_run_without_secret_references_is_admitted(guarded: Guarded) -> None:
    admitted, error = guarded.apply(guarded.creator, harness.echo_run("plain", "Say hello."))
    assert admitted, error


def test_the_admin_is_admitted(guarded: Guarded) -> None:
    admitted, error = guarded.apply(guarded.admin, run_with("by-admin", [model_layer(SECRET), prompt_layer()]))
    assert admitted, error


def test_updates_that_add_no_reference_need_no_secret_access(guarded: Guarded) -> None:
    guarded.apply(guarded.admin, run_with("shared", [model_layer(SECRET), prompt_layer()]))
    # Another user may update a run whose Secret they cannot read, as long as no reference is added.
    labelled = guarded.creator.kubectl("label", "agentrun", "shared", "-n", guarded.namespace, "team=sre", check=False)
    assert labelled.returncode == 0, labelled.stderr
    # ... but not make it reference another Secret (whether the policy or spec immutability says no).
    before = guarded.admin.get("agentrun", "shared", guarded.namespace)
    assert before is not None
    layers = [model_layer("other-secret"), prompt_layer()]
    patch = json.dumps({"spec": {"composition": {"layers": layers}}})
    edited = guarded.creator.kubectl(
        "patch", "agentrun", "shared", "-n", guarded.namespace, "--type=merge", "-p", patch, check=False
    )
    assert edited.returncode != 0, "a spec edit added a reference to a Secret its author cannot read"
    after = guarded.admin.get("agentrun", "shared", guarded.namespace)
    assert after is not None
    assert after["spec"] == before["spec"]


def test_one_secret_referenced_by_every_layer_is_checked_once(guarded: Guarded) -> None:
    """The largest composition, with every reference field naming the same Secret, stays within the CEL budget."""
    guarded.grant(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [SECRET]}, "read-llm-key"
    )
    max_layers = CRD_SPEC["composition"]["properties"]["layers"]["maxItems"]
    layers = []
    for index in range(max_layers):
        layer = model_layer(SECRET, name=f"layer-{index}")
        layer["config"]["headersSecretRef"] = {"name": SECRET}
        layers.append(layer)
    admitted, error = guarded.apply(guarded.creator, run_with("widest", layers))
    assert admitted, error


def test_distinct_secrets_are_bounded(guarded: Guarded) -> None:
    def spread(name: str, count: int) -> dict[str, Any]:
        return run_with(name, [model_layer(f"key-{index}", name=f"layer-{index}") for index in range(count)])

    # The most the policy checks: every check is made, within the API server's cost budget.
    admitted, error = guarded.apply(guarded.admin, spread("sixteen", 16))
    assert admitted, error
    admitted, error = guarded.apply(guarded.admin, spread("seventeen", 17))
    assert not admitted
    assert "an AgentRun may reference at most 16 distinct Secrets; this one adds 17" in error


def test_without_the_policy_the_same_reference_is_not_checked(
    guarded: Guarded, cluster: harness.Cluster, tmp_path: pathlib.Path
) -> None:
    """What `admissionPolicy.enabled: false` means: creating a run is enough to point the operator at a Secret."""
    unguarded = f"{guarded.namespace[:50]}-open"
    cluster.kubectl("create", "namespace", unguarded)
    try:
        cluster.kubectl("create", "secret", "generic", SECRET, "-n", unguarded, "--from-literal=k=sk-not-for-you")
        other = dataclasses.replace(guarded, namespace=unguarded)
        other.grant(
            {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": CREATOR_VERBS}, "agentrun-creator"
        )
        assert guarded.creator.kubectl("get", "secret", SECRET, "-n", unguarded, check=False).returncode != 0
        admitted, error = other.apply(guarded.creator, run_with("unchecked", [model_layer(SECRET), prompt_layer()]))
        assert admitted, error
    finally:
        cluster.kubectl("delete", "namespace", unguarded, "--wait=false", check=False)
