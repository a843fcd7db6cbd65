"""What the node tier's tests share: the session's node, helm against it."""

from __future__ import annotations

import dataclasses
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
            HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data")
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
