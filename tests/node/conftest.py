"""Fixtures of the node tier: one real node for the whole session, and the operator image.

The image is built from the repository's Dockerfile on a Debian Python base (both cached
by their inputs) and loaded into the node's containerd; no registry is involved. Host
paths are fixed, so the session starts exactly one node and shares it. If the node
cannot start the tier fails, and it is never skipped; if the node leaves anything on the
machine when it stops, the session ends with an error that lists what was left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import harness
import localcluster
import nodetier
from localnode import cluster as nodecluster
from localnode import images


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node: needs the real node started by the test session")


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[nodetier.Node]:
    started = time.monotonic()
    binaries = localcluster.find_binaries()
    base = images.python_base()
    operator = images.operator_image(base)
    prepared = time.monotonic() - started
    local = nodecluster.NodeCluster(tmp_path_factory.mktemp("node"), binaries, audit=True)
    local.start([operator])
    versions = local.versions()
    harness.announce(
        request.config,
        f"node tier: node {local.node_name} Ready in {local.timings['ready']:.1f}s, images loaded in "
        f"{local.timings['images']:.1f}s (binaries and image archives ready in {prepared:.1f}s); "
        f"kube-apiserver {versions['kubernetes']} at "
        f"{local.control_plane.server}, kubelet {versions['kubelet']}, {versions['runtime']}, "
        f"runc {versions['runc']}; operator image {operator.name} built from the Dockerfile on {base.name}; "
        f"logs in {local.workdir}",
    )
    assert binaries.helm is not None
    cluster = harness.Cluster(local.kubeconfig, binaries.kubectl, binaries.helm, local.control_plane)
    try:
        helm = nodetier.Helm(binaries.helm, cluster, tmp_path_factory.mktemp("helm"))
        yield nodetier.Node(cluster, local, helm, base, operator)
    finally:
        stopping = time.monotonic()
        local.stop()  # raises, listing what is left, when the node leaves any trace on the machine
        harness.announce(
            request.config,
            f"node tier: teardown in {time.monotonic() - stopping:.1f}s left nothing on this machine "
            "(checked: processes, mounts, network links, iptables rules, host paths, cgroups, sysctls)",
        )
