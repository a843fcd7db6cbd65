"""The runner Pod and its input, as plain manifests (pure functions, unit-tested).

The Pod meets the restricted Pod Security profile: non-root, read-only root filesystem,
no privilege escalation, all capabilities dropped, RuntimeDefault seccomp. It mounts no
API token, carries no Secret value in its environment or arguments, never restarts, and
ends at the run's deadline even when no operator is watching it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

from agentrun.api import models
from agentrun.pods import entry

CONTAINER = "runner"
COMPONENT_LABEL = f"{models.GROUP}/component"
COMPONENT = "runner"
RUNNER_UID = 65532
INPUT_VOLUME = "input"
CREDENTIALS_VOLUME = "credentials"
TMP_VOLUME = "tmp"
TERMINATION_GRACE_SECONDS = 15
"""How long the runner has after SIGTERM to flush its events and print a cancelled result."""
DEADLINE_SLACK_SECONDS = 30
"""The Pod's own deadline lies this far past the run's: the operator ends it first when it watches."""


@dataclasses.dataclass(frozen=True)
class PodDefaults:
    """What the operator's settings give runner Pods when a run says nothing."""

    image: str
    pull_policy: str = "IfNotPresent"
    resources: models.ResourceRequirements | None = None


def input_secret_name(run_name: str, run_uid: str) -> str:
    """The Secret holding a run's resolved input: unique per run uid, like the offloaded payloads."""
    suffix = f"-input-{run_uid[:8]}"
    return run_name[: 253 - len(suffix)] + suffix


def secret_refs(spec: models.AgentRunSpec) -> list[models.SecretKeyRef]:
    """Every Secret key the composition's layers reference (``...SecretRef`` in a layer's config), once each."""
    found: dict[tuple[str, str], models.SecretKeyRef] = {}
    for layer in spec.composition.layers if spec.composition else []:
        for ref in _refs_in(layer.config):
            found.setdefault((ref.name, ref.key), ref)
    return list(found.values())


def _refs_in(value: Any) -> Iterator[models.SecretKeyRef]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and key.endswith("SecretRef") and isinstance(item, Mapping):
                name, secret_key = item.get("name"), item.get("key")
                if isinstance(name, str) and isinstance(secret_key, str) and name and secret_key:
                    yield models.SecretKeyRef(name=name, key=secret_key)
            else:
                yield from _refs_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs_in(item)


def runner_input(spec: models.AgentRunSpec) -> models.AgentRunSpec:
    """Only what the runner needs: the layers, the session to continue, how to leave it, the budgets."""
    return models.AgentRunSpec(
        composition=spec.composition,
        session_snapshot=spec.session_snapshot,
        session_exit=spec.session_exit,
        limits=spec.limits,
    )


def build_pod(
    *,
    namespace: str,
    run_name: str,
    run_uid: str,
    attempt: int,
    pod_name: str,
    spec: models.AgentRunSpec,
    defaults: PodDefaults,
    deadline_seconds: float,
) -> dict[str, Any]:
    """The runner Pod of one attempt, owned by the run (garbage-collected with it)."""
    runner = spec.runner or models.RunnerSpec()
    resources = runner.resources or defaults.resources
    labels = {
        models.MANAGED_BY_LABEL: models.MANAGED_BY_VALUE,
        models.RUN_LABEL: run_name,
        models.RUN_UID_LABEL: run_uid,
        models.ATTEMPT_LABEL: str(attempt),
        COMPONENT_LABEL: COMPONENT,
    }
    owner = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": run_name,
        "uid": run_uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": runner.image or defaults.image,
        "imagePullPolicy": defaults.pull_policy,
        "args": ["runner"],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": INPUT_VOLUME, "mountPath": str(entry.INPUT_DIR), "readOnly": True},
            {"name": CREDENTIALS_VOLUME, "mountPath": str(entry.SECRETS_DIR), "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "File",
    }
    if resources is not None:
        container["resources"] = resources.to_wire()
    credentials = [
        {"secret": {"name": ref.name, "items": [{"key": ref.key, "path": entry.secret_file(ref.name, ref.key)}]}}
        for ref in secret_refs(spec)
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": max(1, math.ceil(deadline_seconds)) + DEADLINE_SLACK_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": INPUT_VOLUME,
                "secret": {"secretName": input_secret_name(run_name, run_uid), "defaultMode": 0o444},
            },
            {"name": CREDENTIALS_VOLUME, "projected": {"sources": credentials, "defaultMode": 0o444}},
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if runner.service_account_name:
        pod_spec["serviceAccountName"] = runner.service_account_name
    if runner.runtime_class_name:
        pod_spec["runtimeClassName"] = runner.runtime_class_name
    if runner.node_selector:
        pod_spec["nodeSelector"] = dict(runner.node_selector)
    if runner.tolerations:
        pod_spec["tolerations"] = [toleration.to_wire() for toleration in runner.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": pod_spec,
    }
