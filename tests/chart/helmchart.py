"""The chart tier's helpers: the chart's path, the helm CLI, picking objects out of a render."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import yaml

import harness

CHART = harness.ROOT / "charts" / "agentrun-operator"

# Exactly the API calls the operator makes (agentrun.kube.store and kopf's watch), nothing more.
EXPECTED_RULES = [
    {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agents"], "verbs": ["get"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agentthreads"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agentthreads/status"], "verbs": ["patch"]},
    {"apiGroups": ["agentrun.dev"], "resources": ["agentruns/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
# Leader election (agentrun.kube.lease), granted in the release namespace only.
EXPECTED_LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]
LEASE_ROLE_SUFFIX = "-leader-election"


class Helm:
    """The helm CLI with its own state directories, pointed at the test cluster."""

    def __init__(self, binary: pathlib.Path, cluster: harness.Cluster, home: pathlib.Path, kube_version: str) -> None:
        self.binary = binary
        self.cluster = cluster
        self.kube_version = kube_version
        self._env = cluster.env(
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, check=False, env=self._env, timeout=180
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template_args(self, values: dict[str, Any] | None, namespace: str, release: str) -> list[str]:
        # A helm built from source reports Kubernetes v1.20 unless told the real target version.
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", self.kube_version]
        for assignment in _assignments(values or {}):
            args += ["--set-json", assignment]
        return args

    def render(
        self, values: dict[str, Any] | None = None, *, namespace: str = "agentrun-system", release: str = "agentrun"
    ) -> list[dict[str, Any]]:
        """``helm template`` with ``values``; the rendered objects."""
        text = self.run(*self.template_args(values, namespace, release)).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def render_error(self, values: dict[str, Any]) -> str:
        """``helm template`` that must fail; its error output."""
        result = self.run(*self.template_args(values, "agentrun-system", "agentrun"), check=False)
        assert result.returncode != 0, f"helm template accepted {values}"
        return result.stderr


def _assignments(values: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.path=<json>`` per leaf, so that nested maps merge with the chart's defaults."""
    found: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found += _assignments(value, f"{path}.")
        else:
            found.append(f"{path}={json.dumps(value)}")
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = by_kind(objects, kind)
    return found


def lease_role(objects: list[dict[str, Any]], kind: str = "Role") -> dict[str, Any]:
    """The leader-election Role (or its RoleBinding) of a render."""
    [found] = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"].endswith(LEASE_ROLE_SUFFIX)]
    return found


def run_roles(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The Roles (or RoleBindings) that grant the run rules, one per watched namespace."""
    return [obj for obj in by_kind(objects, kind) if not obj["metadata"]["name"].endswith(LEASE_ROLE_SUFFIX)]
