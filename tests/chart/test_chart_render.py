"""The chart as `helm lint` and `helm template` see it: kinds, RBAC, the Deployment, the CRD, the schema."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml

import harness
import helmchart
from agentrun import settings as settings_module
from agentrun.api import models

pytestmark = pytest.mark.chart

GENERATED_CRDS = sorted((harness.ROOT / "crds").glob("agentrun.dev_*.yaml"))
CHART_CRD = helmchart.CHART / "files" / "agentrun.dev_agentruns.yaml"
NAMESPACED = {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["a", "b"]}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [operator] = helmchart.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(operator)


def env_values(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(objects)["env"] if "value" in item}


@pytest.mark.parametrize("values", [None, NAMESPACED], ids=["cluster", "namespaced"])
def test_helm_lint_passes(helm: helmchart.Helm, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(helmchart.CHART), "--kube-version", helm.kube_version]
    if values:
        args += ["--set", "rbac.scope=namespaced", "--set", "watchNamespaces={a,b}"]
    result = helm.run(*args)
    assert "0 chart(s) failed" in result.stdout


def test_default_render_is_cluster_scoped(helm: helmchart.Helm) -> None:
    objects = helm.render(release="agentrun-operator", namespace="agentrun-system")
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    binding = helmchart.one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": helmchart.one(objects, "ClusterRole")["metadata"]["name"],
    }
    account = helmchart.one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": "agentrun-system"}]
    assert account["name"] == "agentrun-operator"
    assert env_values(objects)["AGENTRUN_NAMESPACES"] == ""
    # Leases only in the release namespace, never cluster-wide.
    lease_role = helmchart.lease_role(objects)
    assert lease_role["metadata"]["namespace"] == "agentrun-system"
    lease_binding = helmchart.lease_role(objects, "RoleBinding")
    assert lease_binding["metadata"]["namespace"] == "agentrun-system"
    assert lease_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": lease_role["metadata"]["name"],
    }
    assert lease_binding["subjects"] == binding["subjects"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == "agentrun-operator", obj["kind"]
        assert labels["helm.sh/chart"] == "agentrun-operator-0.1.0", obj["kind"]


def test_namespaced_render_has_a_role_and_binding_per_watched_namespace(helm: helmchart.Helm) -> None:
    objects = helm.render(NAMESPACED, namespace="agentrun-system")
    assert not helmchart.by_kind(objects, "ClusterRole")
    assert not helmchart.by_kind(objects, "ClusterRoleBinding")
    roles = {role["metadata"]["namespace"]: role for role in helmchart.run_roles(objects, "Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in helmchart.run_roles(objects, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["a", "b"]
    account = helmchart.one(objects, "ServiceAccount")["metadata"]["name"]
    for namespace, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        # The operator runs in the release namespace and is granted rights in the watched ones only.
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "agentrun-system"}]
    assert env_values(objects)["AGENTRUN_NAMESPACES"] == "a,b"
    # The Lease is in the release namespace, whatever is watched.
    assert helmchart.lease_role(objects)["metadata"]["namespace"] == "agentrun-system"
    assert helmchart.lease_role(objects, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "agentrun-system"}
    ]


@pytest.mark.parametrize(("values", "kind"), [(None, "ClusterRole"), (NAMESPACED, "Role")], ids=["cluster", "ns"])
def test_rbac_rules_are_exactly_the_calls_the_operator_makes(
    helm: helmchart.Helm, values: dict[str, Any] | None, kind: str
) -> None:
    objects = helm.render(values)
    roles = helmchart.run_roles(objects, kind)
    assert roles
    for role in roles:
        assert role["rules"] == helmchart.EXPECTED_RULES
    lease_role = helmchart.lease_role(objects)
    assert lease_role["rules"] == helmchart.EXPECTED_LEASE_RULES
    for role in [*roles, lease_role]:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert rule.keys() == {"apiGroups", "resources", "verbs"}


def test_every_rbac_rule_carries_a_comment_saying_why(helm: helmchart.Helm) -> None:
    args = helm.template_args(NAMESPACED, "agentrun-system", "agentrun")
    text = helm.run(*args, "--show-only", "templates/rbac.yaml").stdout
    lines = text.splitlines()
    rule_starts = [index for index, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    # Two Roles for the watched namespaces, one for leader election.
    assert len(rule_starts) == 2 * len(helmchart.EXPECTED_RULES) + len(helmchart.EXPECTED_LEASE_RULES)
    for index in rule_starts:
        assert lines[index - 1].lstrip().startswith("# "), f"rule without a comment: {lines[index]}"


def test_rbac_create_false_renders_no_grant(helm: helmchart.Helm) -> None:
    objects = helm.render({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {obj["kind"] for obj in objects}


def test_deployment_is_replicated_restricted_and_probed(helm: helmchart.Helm) -> None:
    objects = helm.render()
    deployment = helmchart.one(objects, "Deployment")
    spec = deployment["spec"]
    # A leader and a standby; a rollout starts a new Pod, Ready as a standby, before it stops an old one.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["affinity"] == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": spec["selector"]["matchLabels"]},
                    },
                }
            ]
        }
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] == 25
    operator = container(objects)
    assert operator["securityContext"]["allowPrivilegeEscalation"] is False
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert operator["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    probe = operator["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == settings_module.Settings.model_fields["liveness_port"].default
    assert "command" not in operator  # the image's entrypoint, `agentrun`
    assert operator["args"] == ["operator"]
    [tmp] = operator["volumeMounts"]
    assert tmp["mountPath"] == "/tmp"
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    env = {item["name"]: item for item in operator["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["AGENTRUN_LOG_FORMAT"]["value"] == "json"
    readiness = operator["readinessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/readyz", "healthz")


def test_a_user_affinity_replaces_the_default_spread(helm: helmchart.Helm) -> None:
    mine = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}}
    ]}}  # fmt: skip
    pod = helmchart.one(helm.render({"affinity": mine}), "Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"] == mine


@pytest.mark.parametrize(
    ("values", "budget"),
    [
        (None, True),
        ({"replicas": 3}, True),
        ({"replicas": 1}, False),
        ({"podDisruptionBudget": {"enabled": False}}, False),
    ],
    ids=["default", "three", "single", "disabled"],
)
def test_pod_disruption_budget_lets_one_pod_go_at_a_time(
    helm: helmchart.Helm, values: dict[str, Any] | None, budget: bool
) -> None:
    objects = helm.render(values)
    budgets = helmchart.by_kind(objects, "PodDisruptionBudget")
    if not budget:
        assert not budgets
        return
    [pdb] = budgets
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == "agentrun-system"
    # maxUnavailable, not minAvailable: one eviction at a time at any replica count.
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": helmchart.one(objects, "Deployment")["spec"]["selector"]["matchLabels"]},
    }


@pytest.mark.parametrize("grace", [15, 12.5, 20, 0.5, 1])
def test_termination_grace_is_the_shutdown_grace_rounded_up_plus_ten(helm: helmchart.Helm, grace: float) -> None:
    objects = helm.render({"operator": {"shutdownGraceSeconds": grace}})
    pod = helmchart.one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == math.ceil(grace) + 10
    assert isinstance(pod["terminationGracePeriodSeconds"], int)
    assert float(env_values(objects)["AGENTRUN_SHUTDOWN_GRACE_SECONDS"]) == grace


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> settings_module.Settings:
    import os

    for name in list(os.environ):
        if name.startswith("AGENTRUN_") or name in ("POD_NAME", "POD_NAMESPACE"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings_module.Settings()


def test_default_env_parses_to_the_operator_defaults(helm: helmchart.Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_values(helm.render(release="agentrun-operator"))
    downward = {"POD_NAME": "agentrun-operator-7d9c-abcde", "POD_NAMESPACE": "agentrun-system"}
    parsed = _settings_from({**env, **downward}, monkeypatch)
    defaults = settings_module.Settings(instance="agentrun-operator-7d9c-abcde")
    assert parsed == defaults
    assert parsed.instance == "agentrun-operator-7d9c-abcde"
    # The Lease is the release's, in the operator's own namespace (where the chart's Role allows it).
    assert (parsed.lease_namespace, parsed.lease_name) == ("agentrun-system", "agentrun-operator")


def test_every_operator_setting_has_a_chart_value(helm: helmchart.Helm) -> None:
    env = env_values(helm.render())
    # `instance` and `lease_namespace` come from POD_NAME and POD_NAMESPACE (downward API), the rest from the chart.
    downward = {"instance", "lease_namespace"}
    expected = {f"AGENTRUN_{name.upper()}" for name in settings_module.Settings.model_fields if name not in downward}
    assert set(env) == expected


def test_custom_values_reach_the_operator(helm: helmchart.Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "rbac": {"scope": "namespaced"},
        "operator": {
            "maxConcurrentRuns": 7,
            "shutdownGraceSeconds": 4.5,
            "eventRingSize": 20,
            "statusBudgetBytes": 1048576,
            "progressIntervalSeconds": 0.5,
            "resyncIntervalSeconds": 7.5,
            "logLevel": "DEBUG",
            "logFormat": "text",
            "livenessPort": 8181,
            "metricsPort": 9191,
            "defaultTimeoutSeconds": 120,
            "apiRequestTimeoutSeconds": 10,
            "ttlSecondsAfterFinished": 86400,
            "maxLimits": {"maxTotalTokens": 50000, "maxToolCalls": 0},
        },
        "leaderElection": {"leaseDurationSeconds": 6, "renewDeadlineSeconds": 4, "retryPeriodSeconds": 1.5},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    }
    objects = helm.render(values, release="platform")
    env = env_values(objects)
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    parsed = _settings_from(env, monkeypatch)
    assert parsed.namespaces == ["team-a", "team-b"]
    assert parsed.max_concurrent_runs == 7
    assert parsed.shutdown_grace_seconds == 4.5
    assert parsed.event_ring_size == 20
    assert parsed.status_budget_bytes == 1048576
    assert parsed.progress_interval_seconds == 0.5
    assert parsed.resync_interval_seconds == 7.5
    assert parsed.lease_name == "platform-agentrun-operator"
    lease = (parsed.lease_duration_seconds, parsed.lease_renew_deadline_seconds, parsed.lease_retry_period_seconds)
    assert lease == (6, 4, 1.5)
    assert parsed.log_level == "DEBUG"
    assert parsed.log_format is settings_module.LogFormat.TEXT
    assert (parsed.default_timeout_seconds, parsed.api_request_timeout_seconds) == (120, 10)
    assert parsed.default_ttl_seconds_after_finished == 86400
    assert parsed.max_limits == models.Limits(max_total_tokens=50000, max_tool_calls=0)
    assert (parsed.liveness_port, parsed.metrics_port) == (8181, 9191)
    ports = {port["name"]: port["containerPort"] for port in container(objects)["ports"]}
    assert ports == {"healthz": 8181, "metrics": 9191}
    assert helmchart.one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 15


def test_chart_crd_files_are_the_generated_crds() -> None:
    chart_files = sorted((helmchart.CHART / "files").glob("agentrun.dev_*.yaml"))
    assert [path.name for path in chart_files] == [path.name for path in GENERATED_CRDS]
    for generated, shipped in zip(GENERATED_CRDS, chart_files, strict=True):
        assert shipped.read_bytes() == generated.read_bytes(), "run `make crds` (it writes both copies)"


def test_rendered_crds_are_the_generated_ones_plus_labels_and_keep(helm: helmchart.Helm) -> None:
    rendered = {crd["metadata"]["name"]: crd for crd in helmchart.by_kind(helm.render(), "CustomResourceDefinition")}
    generated = [yaml.safe_load(path.read_text()) for path in GENERATED_CRDS]
    assert sorted(rendered) == sorted(crd["metadata"]["name"] for crd in generated)
    for expected in generated:
        crd = rendered[expected["metadata"]["name"]]
        metadata = crd["metadata"]
        assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        labels = metadata.pop("labels")
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "agentrun-operator"
        assert crd == expected


def test_crd_toggles(helm: helmchart.Helm) -> None:
    assert not helmchart.by_kind(helm.render({"crds": {"install": False}}), "CustomResourceDefinition")
    for crd in helmchart.by_kind(helm.render({"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"shutdownGraceSeconds": 60}}, "/operator/shutdownGraceSeconds"),
        ({"operator": {"shutdownGraceSeconds": 0}}, "/operator/shutdownGraceSeconds"),
        ({"rbac": {"scope": "everything"}}, "/rbac/scope"),
        ({"replicaCount": 2}, "'replicaCount' not allowed"),
        ({"replicas": 0}, "/replicas"),
        ({"replicas": 1.5}, "/replicas"),
        ({"leaderElection": {"leaseDurationSeconds": 1}}, "/leaderElection/leaseDurationSeconds"),
        ({"leaderElection": {"retryPeriodSeconds": 0}}, "/leaderElection/retryPeriodSeconds"),
        ({"leaderElection": {"leaseName": "mine"}}, "'leaseName' not allowed"),
        ({"podDisruptionBudget": {"minAvailable": 1}}, "'minAvailable' not allowed"),
        ({"operator": {"resyncIntervalSeconds": 0}}, "/operator/resyncIntervalSeconds"),
        ({"operator": {"heartbeatIntervalSeconds": 15}}, "'heartbeatIntervalSeconds' not allowed"),
        ({"extraEnv": [{"name": "POD_NAMESPACE", "value": "x"}]}, "/extraEnv/0/name"),
        ({"unknownTopLevel": True}, "'unknownTopLevel' not allowed"),
        ({"operator": {"maxConcurrentRun": 5}}, "'maxConcurrentRun' not allowed"),
        ({"rbac": {"scope": "namespaced"}}, "/watchNamespaces"),
        ({"rbac": {"scope": "namespaced"}, "watchNamespaces": []}, "/watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": ["team-*"]}, "/watchNamespaces/0"),
        ({"operator": {"maxConcurrentRuns": 0}}, "/operator/maxConcurrentRuns"),
        ({"operator": {"eventRingSize": 2}}, "/operator/eventRingSize"),
        ({"operator": {"statusBudgetBytes": 2097152}}, "/operator/statusBudgetBytes"),
        ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
        ({"operator": {"logLevel": "LOUD"}}, "/operator/logLevel"),
        ({"operator": {"livenessPort": 0}}, "/operator/livenessPort"),
        ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"resources": {"limits": {"gpu": 1}}}, "gpu"),
        ({"resources": {"requests": {"memory": "lots"}}}, "/resources/requests/memory"),
        ({"crds": {"install": "yes"}}, "/crds/install"),
        ({"admissionPolicy": {"enabled": "yes"}}, "/admissionPolicy/enabled"),
        ({"admissionPolicy": {"mode": "Warn"}}, "'mode' not allowed"),
        ({"extraEnv": [{"name": "AGENTRUN_NAMESPACES", "value": "x"}]}, "/extraEnv/0/name"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_schema_rejects_bad_values(helm: helmchart.Helm, values: dict[str, Any], complaint: str) -> None:
    error = helm.render_error(values)
    assert "don't meet the specifications of the schema" in error
    assert complaint in error


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}},
            "leaderElection needs leaseDurationSeconds > renewDeadlineSeconds > 1.2 x retryPeriodSeconds",
        ),
        (
            {"leaderElection": {"renewDeadlineSeconds": 6, "retryPeriodSeconds": 5}},
            "got 10 > 6 > 1.2 x 5",
        ),
        ({"operator": {"metricsPort": 0}}, "metrics.service.enabled needs operator.metricsPort > 0"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        ({"operator": {"livenessPort": 9090}}, "operator.livenessPort and operator.metricsPort must differ"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name must name an existing ServiceAccount"),
    ],
    ids=["lease-deadline", "lease-retry", "metrics-port", "service-monitor", "ports", "service-account"],
)
def test_checks_across_values_fail_with_a_clear_message(
    helm: helmchart.Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.render_error(values)


@pytest.mark.parametrize(
    "timing",
    [(15, 10, 2), (6, 4, 1), (3, 2.5, 2), (10, 10, 2), (15, 2.4, 2), (15, 2.5, 2), (4, 5, 1), (300, 299, 248)],
    ids=str,
)
def test_the_chart_accepts_exactly_the_lease_timings_the_operator_accepts(
    helm: helmchart.Helm, monkeypatch: pytest.MonkeyPatch, timing: tuple[float, float, float]
) -> None:
    duration, deadline, retry = timing
    lease = {"leaseDurationSeconds": duration, "renewDeadlineSeconds": deadline, "retryPeriodSeconds": retry}
    args = helm.template_args({"leaderElection": lease}, "agentrun-system", "agentrun")
    chart_accepts = helm.run(*args, check=False).returncode == 0
    try:
        _settings_from(
            {
                "AGENTRUN_LEASE_DURATION_SECONDS": str(duration),
                "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS": str(deadline),
                "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS": str(retry),
            },
            monkeypatch,
        )
        operator_accepts = True
    except ValueError:
        operator_accepts = False
    assert chart_accepts is operator_accepts


def test_namespaced_without_namespaces_fails_even_without_the_schema(helm: helmchart.Helm) -> None:
    args = helm.template_args({"rbac": {"scope": "namespaced"}}, "agentrun-system", "agentrun")
    result = helm.run(*args, "--skip-schema-validation", check=False)
    assert result.returncode != 0
    assert "rbac.scope=namespaced needs watchNamespaces" in result.stderr


def test_metrics_service_and_service_monitor_line_up(helm: helmchart.Helm) -> None:
    objects = helm.render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}})
    service = helmchart.one(objects, "Service")
    monitor = helmchart.one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    container_ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert port["targetPort"] in container_ports
    pod_labels = helmchart.one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_metrics_can_be_turned_off(helm: helmchart.Helm) -> None:
    objects = helm.render({"operator": {"metricsPort": 0}, "metrics": {"service": {"enabled": False}}})
    assert not helmchart.by_kind(objects, "Service")
    assert not helmchart.by_kind(objects, "ServiceMonitor")
    assert [port["name"] for port in container(objects)["ports"]] == ["healthz"]
    assert env_values(objects)["AGENTRUN_METRICS_PORT"] == "0"


def test_existing_service_account(helm: helmchart.Helm) -> None:
    objects = helm.render({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not helmchart.by_kind(objects, "ServiceAccount")
    pod = helmchart.one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"
    assert helmchart.one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-operator"


def test_image_reference(helm: helmchart.Helm) -> None:
    assert container(helm.render())["image"] == "agentrun-operator:0.1.0"
    tagged = helm.render({"image": {"repository": "registry.local/agentrun", "tag": "dev"}})
    assert container(tagged)["image"] == "registry.local/agentrun:dev"
    digest = "sha256:" + "ab" * 32
    pinned = helm.render({"image": {"tag": "dev", "digest": digest}})
    assert container(pinned)["image"] == f"agentrun-operator@{digest}"


def test_chart_versions_match_the_package() -> None:
    import agentrun

    chart = yaml.safe_load((helmchart.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == agentrun.__version__


def test_rendered_objects_pass_the_real_api_server_and_the_restricted_pod_security_standard(
    cluster: harness.Cluster, helm: helmchart.Helm, namespace: str
) -> None:
    # Enforce `restricted` here, so a Pod that breaks it is rejected, not just warned about.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # The longest release name Helm allows: every generated name must still be valid.
    release = ("r" + namespace.replace("-", "") * 3)[:53]
    objects = helm.render(namespace=namespace, release=release)
    objects = [obj for obj in objects if obj["kind"] != "CustomResourceDefinition"]  # the session's CRD exists
    # Strict field validation: an unknown or misplaced field fails the create.
    result = cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-o", "name", "-f", "-", stdin=yaml.safe_dump_all(objects)
    )
    assert sorted(line.split("/", 1)[1] for line in result.stdout.split()) == sorted(
        obj["metadata"]["name"] for obj in objects
    )
    template = helmchart.one(objects, "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", **template["metadata"]}}
    pod["spec"] = template["spec"]
    cluster.kubectl("create", "serviceaccount", pod["spec"]["serviceAccountName"], "-n", namespace)
    created = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(pod), check=False
    )
    assert created.returncode == 0, created.stderr
    assert "violate" not in created.stderr


# --- the admission policy against the confused deputy --------------------------------------

SECRET_REFERENCES = ("apiKeySecretRef", "headersSecretRef", "sessionSnapshotRef")


def admission_policy(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    policy = helmchart.one(objects, "ValidatingAdmissionPolicy")
    binding = helmchart.one(objects, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def test_admission_policy_is_on_by_default_and_checks_every_secret_reference(helm: helmchart.Helm) -> None:
    policy, binding = admission_policy(helm.render(release="agentrun-operator"))
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "agentrun-operator-secret-references"
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": ["agentrun.dev"],
        "apiVersions": ["*"],
        "resources": ["agentruns"],
        "operations": ["CREATE", "UPDATE"],
    }
    variables = {variable["name"]: variable["expression"] for variable in spec["variables"]}
    for field in SECRET_REFERENCES:
        assert field in variables["references"], field
        assert field in variables["previousSecrets"], field
    # One slot per index a reference can have: every layer (the CRD's maxItems) times the layer fields, plus spec's.
    crd = yaml.safe_load(CHART_CRD.read_text())
    max_layers = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "composition"
    ]["properties"]["layers"]["maxItems"]
    references = max_layers * 2 + 1
    assert f"[{', '.join(str(i) for i in range(references))}]" in variables["secrets"]
    checks = [v for v in spec["validations"] if "authorizer" in v["expression"]]
    limits = [v for v in spec["validations"] if "authorizer" not in v["expression"]]
    assert [limit["expression"] for limit in limits] == [
        f"size(variables.referencedSecrets) <= {references}",
        "size(variables.secrets) <= 16",
    ]
    assert len(checks) == 16
    for slot, check in enumerate(checks):
        # The API server charges 350000 of an expression's 1000000 cost units per check: one each.
        assert check["expression"].count(".check(") == 1
        assert f"variables.secrets[{slot}]" in check["expression"]
        assert ".check('get').allowed()" in check["expression"]
        assert f"variables.secrets[{slot}]" in check["messageExpression"]
        assert check["reason"] == "Forbidden"
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # watches every namespace, guards every namespace


def test_admission_policy_guards_exactly_the_watched_namespaces(helm: helmchart.Helm) -> None:
    _, binding = admission_policy(helm.render(NAMESPACED))
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}]
        }
    }


def test_admission_policy_can_be_disabled(helm: helmchart.Helm) -> None:
    objects = helm.render({"admissionPolicy": {"enabled": False}})
    kinds = {obj["kind"] for obj in objects}
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & kinds
    assert "Deployment" in kinds


def test_admission_policy_needs_kubernetes_1_30(helm: helmchart.Helm) -> None:
    old = [arg if arg != helm.kube_version else "v1.29.9" for arg in helm.template_args(None, "ns", "agentrun")]
    result = helm.run(*old, check=False)
    assert result.returncode != 0
    assert "admissionPolicy.enabled needs Kubernetes 1.30 or later" in result.stderr
    disabled = [*old, "--set", "admissionPolicy.enabled=false"]
    assert "kind: Deployment" in helm.run(*disabled).stdout


def test_runner_pods_get_the_operator_image_and_default_mode(helm: helmchart.Helm) -> None:
    env = {e["name"]: e.get("value") for e in container_env(helm.render({"image": {"tag": "1.2.3"}}))}
    assert env["AGENTRUN_DEFAULT_RUNNER_MODE"] == "task"
    assert env["AGENTRUN_RUNNER_IMAGE"] == "agentrun-operator:1.2.3"
    assert json.loads(env["AGENTRUN_RUNNER_RESOURCES"])["limits"]["memory"] == "512Mi"
    chosen = container_env(helm.render({"runner": {"defaultMode": "pod", "image": "mine/runner:2"}}))
    env = {e["name"]: e.get("value") for e in chosen}
    assert (env["AGENTRUN_DEFAULT_RUNNER_MODE"], env["AGENTRUN_RUNNER_IMAGE"]) == ("pod", "mine/runner:2")


def container_env(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    deployment = helmchart.one(objects, "Deployment")
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["env"])


def test_the_runner_network_policy_allows_only_dns_and_the_model_hosts(helm: helmchart.Helm) -> None:
    assert not [o for o in helm.render() if o["kind"] == "NetworkPolicy"]  # off by default
    values = {
        **NAMESPACED,
        "runner": {"networkPolicy": {"enabled": True, "modelHosts": [{"cidr": "10.9.0.0/24", "ports": [443]}]}},
    }
    policies = [o for o in helm.render(values) if o["kind"] == "NetworkPolicy"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["a", "b"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"]["agentrun.dev/component"] == "runner"
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["ingress"] == []
        dns, model = spec["egress"]
        assert {port["port"] for port in dns["ports"]} == {53}
        assert model == {"to": [{"ipBlock": {"cidr": "10.9.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    assert "needs watchNamespaces" in helm.render_error({"runner": {"networkPolicy": {"enabled": True}}})
