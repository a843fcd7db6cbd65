"""What the node tier's tests share: the session's node, helm against it."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess

import harness
from localnode import cluster as nodecluster
from localnode import images


class Helm:
    """The pinned helm CLI with its own state directories, pointed at the node cluster."""

    def __init__(self, binary: pathlib.Path, cluster: harness.Cluster, home: pathlib.Path) -> None:
        self.binary = binary
        self.env = cluster.env(
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, check=False, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


@dataclasses.dataclass
class Node:
    """The session's node cluster, the admin's view of it, and the images loaded into it."""

    cluster: harness.Cluster
    local: nodecluster.NodeCluster
    helm: Helm
    base_image: images.Image
    operator_image: images.Image

    @property
    def operator_values(self) -> list[str]:
        """``helm --set`` arguments that run the image built from the Dockerfile."""
        repository, tag = self.operator_image.name.rsplit(":", 1)
        return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def diagnose(node: Node, namespace: str) -> str:
    """What went wrong with the Pods of a namespace: states, recent events, the last log lines."""
    lines = []
    pods = json.loads(node.cluster.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False).stdout or "{}")
    for pod in pods.get("items", []):
        name = pod["metadata"]["name"]
        for status in pod.get("status", {}).get("containerStatuses", []):
            lines.append(f"pod {name} container {status['name']}: restarts {status['restartCount']}, "
                         f"state {status.get('state')}, last state {status.get('lastState')}")  # fmt: skip
            for previous in ("--previous", None):
                args = ["logs", "-n", namespace, name, "-c", status["name"], "--tail=30"]
                logs = node.cluster.kubectl(*args, *([previous] if previous else []), check=False).stdout
                if logs.strip():
                    lines.append(f"logs of {name}{' (previous container)' if previous else ''}:\n{logs}")
                    break
    columns = "custom-columns=REASON:.reason,MESSAGE:.message"
    events = node.cluster.kubectl(
        "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", "-o", columns, check=False
    ).stdout
    lines.append(f"events in {namespace}:\n{events[-3000:]}")
    return "\n".join(lines)


def wait_available(node: Node, namespace: str, deployment: str, timeout: float = 180) -> None:
    """Wait until every replica of the Deployment is Ready; fail at once, with the reason, when one crash-loops."""

    def available() -> bool:
        body = node.cluster.get("deployment", deployment, namespace) or {}
        status = body.get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        replicas = body.get("spec", {}).get("replicas")
        ready = status.get("readyReplicas") == status.get("replicas") == status.get("updatedReplicas") == replicas
        if conditions.get("Available") == "True" and ready:
            return True
        pods = json.loads(node.cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        restarts = [s["restartCount"] for pod in pods for s in pod.get("status", {}).get("containerStatuses", [])]
        if any(count >= 2 for count in restarts):
            raise AssertionError(f"deployment {namespace}/{deployment} crash-loops:\n{diagnose(node, namespace)}")
        return False

    try:
        harness.wait_until(available, timeout=timeout, interval=0.5, what=f"deployment {namespace}/{deployment}")
    except AssertionError as error:
        if "crash-loops" in str(error):
            raise
        raise AssertionError(f"{error}\n{diagnose(node, namespace)}") from None
