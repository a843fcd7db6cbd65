"""Fixtures of the integration and chart tiers: one real API server per test session.

``AGENTRUN_TEST_KUBECONFIG`` points the suite at an existing cluster (kind);
otherwise etcd and kube-apiserver are started on loopback from the pinned build.
If the control plane cannot start, the session fails: the tier is never skipped.
"""

from __future__ import annotations

import os
import pathlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import harness
import localcluster


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(harness.SESSION_LINES, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Cluster]:
    existing = os.environ.get("AGENTRUN_TEST_KUBECONFIG")
    if existing:
        with harness.existing_cluster(pathlib.Path(existing)) as handle:
            version = handle.kubectl("version", "-o", "json").stdout
            harness.announce(
                request.config, f"integration tier: existing cluster from AGENTRUN_TEST_KUBECONFIG: {version}"
            )
            handle.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(localcluster.CRD_DIR))
            yield handle
        return
    workdir = tmp_path_factory.mktemp("control-plane")
    with localcluster.running(workdir, audit=True) as local:
        harness.announce(
            request.config,
            f"integration tier: real kube-apiserver {local.version()} at {local.server} "
            f"(etcd + kube-apiserver, binaries in {local.binaries.bin_dir})",
        )
        yield harness.Cluster(local.kubeconfig, local.binaries.kubectl, local.binaries.helm, local)


@pytest.fixture
def namespace(cluster: harness.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test."""
    stem = request.node.name.lower().replace("_", "-")
    name = "".join(c for c in stem if c.isalnum() or c == "-")[:40].strip("-")
    name = f"{name}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def start_operator(
    cluster: harness.Cluster, tmp_path: pathlib.Path
) -> Iterator[Callable[..., harness.OperatorProcess]]:
    """Start ``agentrun operator`` processes for the test; all are stopped afterwards."""
    started: list[harness.OperatorProcess] = []

    def start(*namespaces: str, wait_ready: bool = True, **settings: Any) -> harness.OperatorProcess:
        process = harness.OperatorProcess(cluster, list(namespaces), tmp_path, **settings)
        started.append(process)
        return process.start(wait_ready=wait_ready)

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def operator(namespace: str, start_operator: Callable[..., harness.OperatorProcess]) -> harness.OperatorProcess:
    """One operator watching this test's namespace, with default settings."""
    return start_operator(namespace)
