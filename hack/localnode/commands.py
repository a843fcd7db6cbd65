"""``python hack/localcluster.py prepare-node`` and ``up --node``: the node for people and for CI."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import time

import localcluster
from localnode import cluster as nodecluster
from localnode import host, images


def prepare() -> int:
    """Install the Debian packages, build or reuse the binaries and the images; report each step's time."""
    started = time.monotonic()
    steps: list[str] = []

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        steps.append(f"{name} {now - since:.1f}s")
        print(f"prepare-node: {name} ready after {now - since:.1f}s", flush=True)
        return now

    mark = started
    host.install_packages()
    mark = step("Debian packages", mark)
    localcluster.find_binaries()
    mark = step("cluster binaries", mark)
    images.pause_image()
    mark = step("pause image", mark)
    base = images.python_base()
    mark = step("Python base image", mark)
    operator = images.operator_image(base)
    step("operator image", mark)
    print(f"prepare-node: {operator.name} on {base.name}; total {time.monotonic() - started:.1f}s", flush=True)
    return 0


def up(directory: pathlib.Path) -> int:
    """Keep a node cluster up, with the operator image loaded, until Ctrl-C or SIGTERM."""
    base = images.python_base()
    operator = images.operator_image(base)
    shutil.rmtree(directory, ignore_errors=True)
    binaries = localcluster.find_binaries()
    cluster = nodecluster.NodeCluster(directory, binaries)
    cluster.start([operator])
    try:
        repository, tag = operator.name.rsplit(":", 1)
        print(f"node {cluster.node_name} Ready in {cluster.timings['ready']:.1f}s; "
              f"kube-apiserver {cluster.control_plane.version()} at {cluster.control_plane.server}")  # fmt: skip
        print(f"logs in {directory}; the operator image {operator.name} is loaded")
        print(f"export PATH={binaries.bin_dir}:$PATH")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(
            "helm install agentrun charts/agentrun-operator -n agentrun-system --create-namespace "
            f"--set image.repository={repository} --set image.tag={tag}",
            flush=True,
        )
        # Started in the background, a process may inherit SIGINT ignored: both signals stop the node.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        cluster.stop()
        print("node stopped; nothing of it is left on this machine", flush=True)
    return 0
