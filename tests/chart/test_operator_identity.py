"""The identity operators under test run as holds the chart's cluster-scope RBAC and nothing else.

The local control plane binds ``agentrun-operator-under-test`` to the ClusterRole that
``helm template`` renders from the chart, so the integration tier proves that every call
the operator makes is granted by the chart. The chart's leader-election rules (a Role in
the release namespace) are bound cluster-wide too, because each test's operators elect in
that test's own namespace.
"""

from __future__ import annotations

import json

import pytest

import harness
import helmchart
import localcluster

pytestmark = pytest.mark.chart


@pytest.fixture
def local(cluster: harness.Cluster) -> localcluster.LocalCluster:
    if cluster.local is None:
        pytest.skip("on an existing cluster (AGENTRUN_TEST_KUBECONFIG) operators run with its kubeconfig")
    return cluster.local


def can_i(cluster: harness.Cluster, verb: str, resource: str, *flags: str) -> bool:
    target = [resource]
    if "/" in resource:  # a subresource: log, exec
        parent, subresource = resource.split("/", 1)
        target = [parent, f"--subresource={subresource}"]
    result = cluster.kubectl("auth", "can-i", verb, *target, "--all-namespaces", *flags, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def test_operator_identity_is_in_no_privileged_group(
    cluster: harness.Cluster, local: localcluster.LocalCluster
) -> None:
    operator = cluster.as_user(local.operator_kubeconfig)
    review = json.loads(operator.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert review["username"] == localcluster.OPERATOR_USER
    assert review.get("groups") == ["system:authenticated"]


def test_operator_identity_is_bound_to_exactly_the_chart_roles(
    cluster: harness.Cluster, local: localcluster.LocalCluster
) -> None:
    bindings = json.loads(cluster.kubectl("get", "clusterrolebindings", "-o", "json").stdout)["items"]
    mine = [b for b in bindings if any(s.get("name") == localcluster.OPERATOR_USER for s in b.get("subjects") or [])]
    rules = {}
    for binding in mine:
        assert binding["subjects"] == [
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": localcluster.OPERATOR_USER}
        ]
        assert binding["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"  # rendered by the chart
        role = cluster.get("clusterrole", binding["roleRef"]["name"], "default")
        assert role is not None
        rules[binding["metadata"]["name"]] = role["rules"]
    assert rules == {
        localcluster.OPERATOR_USER: helmchart.EXPECTED_RULES,
        localcluster.LEASE_ROLE: helmchart.EXPECTED_LEASE_RULES,
    }
    role_bindings = json.loads(cluster.kubectl("get", "rolebindings", "-A", "-o", "json").stdout)["items"]
    assert not [
        b for b in role_bindings if any(s.get("name") == localcluster.OPERATOR_USER for s in b.get("subjects") or [])
    ]


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("watch", "agentruns.agentrun.dev", True),
        ("patch", "agentruns.agentrun.dev", True),
        ("get", "secrets", True),
        ("create", "events", True),
        ("update", "leases.coordination.k8s.io", True),
        ("delete", "leases.coordination.k8s.io", False),
        ("*", "*", False),
        ("delete", "agentruns.agentrun.dev", True),
        ("create", "agentruns.agentrun.dev", False),
        ("list", "secrets", False),
        ("create", "pods", True),
        ("get", "pods/log", True),
        ("create", "pods/exec", False),
        ("patch", "pods", False),
        ("list", "namespaces", False),
        ("create", "validatingadmissionpolicies.admissionregistration.k8s.io", False),
    ],
)
def test_operator_identity_may_do_what_the_chart_grants(
    cluster: harness.Cluster, local: localcluster.LocalCluster, verb: str, resource: str, allowed: bool
) -> None:
    assert can_i(cluster, verb, resource, f"--as={localcluster.OPERATOR_USER}") is allowed
