"""Fixtures of the chart tier: the pinned helm binary, run against the session's API server."""

from __future__ import annotations

import json

import pytest

import harness
import helmchart
import localcluster


@pytest.fixture(scope="session")
def kube_version(cluster: harness.Cluster) -> str:
    return str(json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"])


@pytest.fixture(scope="session")
def helm(cluster: harness.Cluster, kube_version: str, tmp_path_factory: pytest.TempPathFactory) -> helmchart.Helm:
    binary = cluster.helm_bin
    if binary is None or not binary.is_file():
        # An existing cluster without helm on PATH: the pinned build has it.
        binary = localcluster.find_binaries().helm
    if binary is None or not binary.is_file():
        pytest.fail("helm is required by the chart tier: put it on PATH or run `make controlplane`")
    return helmchart.Helm(binary, cluster, tmp_path_factory.mktemp("helm"), kube_version)
