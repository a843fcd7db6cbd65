"""A throwaway Kubernetes control plane (etcd + kube-apiserver) on loopback.

Used by the integration tests and ``make demo``. The binaries come from
``KUBEBUILDER_ASSETS`` when set (the envtest convention), otherwise from
``hack/controlplane/build.sh``, which builds pinned versions from Go modules
into a cache outside the work tree.

There is no scheduler, kubelet or controller-manager here: Pods are never run,
owned objects are never garbage-collected, namespaces never finish deleting.
``localnode`` adds all of them, and a real node, on top of this module.

Run ``python hack/localcluster.py up`` to keep one running until Ctrl-C, or
``up --node`` for a cluster with a node (``make cluster``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import yaml

import processes

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CRD_DIR = ROOT / "crds"
REQUIRED = ("kube-apiserver", "etcd", "kubectl")
OPERATOR_USER = "agentrun-operator-under-test"
LEASE_ROLE = f"{OPERATOR_USER}-leases-in-every-namespace"
"""The chart's leader-election rules, bound cluster-wide: each test's operators elect in its own namespace."""


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    kube_apiserver: pathlib.Path
    etcd: pathlib.Path
    kubectl: pathlib.Path
    helm: pathlib.Path | None

    @property
    def bin_dir(self) -> pathlib.Path:
        return self.kubectl.parent


def find_binaries() -> Binaries:
    """Locate (or build once, then reuse) the control-plane binaries."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        directory = pathlib.Path(assets)
        missing = [name for name in REQUIRED if not (directory / name).is_file()]
        if missing:
            raise ControlPlaneError(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        helm = directory / "helm" if (directory / "helm").is_file() else shutil.which("helm")
        return Binaries(
            directory / "kube-apiserver",
            directory / "etcd",
            directory / "kubectl",
            pathlib.Path(helm) if helm else None,
        )
    built = subprocess.run(
        ["bash", str(HERE / "controlplane" / "build.sh")], check=False, stdout=subprocess.PIPE, text=True
    )
    if built.returncode != 0:
        raise ControlPlaneError(f"hack/controlplane/build.sh failed with exit code {built.returncode}")
    directory = pathlib.Path(built.stdout.strip().splitlines()[-1])
    return Binaries(directory / "kube-apiserver", directory / "etcd", directory / "kubectl", directory / "helm")


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class LocalCluster:
    """etcd and kube-apiserver on loopback, with an admin kubeconfig and the CRDs applied."""

    def __init__(self, workdir: pathlib.Path, binaries: Binaries, *, audit: bool = False) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.audit_log = workdir / "audit.log" if audit else None
        self.kubeconfig = workdir / "kubeconfig"
        self.operator_kubeconfig = workdir / "operator.kubeconfig"
        self.token = secrets.token_hex(16)
        # A separate identity for operators under test, so the audit log tells their writes apart.
        self.operator_token = secrets.token_hex(16)
        self.etcd_port = processes.free_port()
        self.etcd_peer_port = processes.free_port()
        self.apiserver_port = processes.free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_identity()
        self._start_etcd()
        self.start_apiserver(timeout=timeout)
        self.write_kubeconfig(self.kubeconfig, "admin", self.token)
        self.write_kubeconfig(self.operator_kubeconfig, OPERATOR_USER, self.operator_token)
        self.apply_crds()
        self.grant_operator_chart_rbac()

    def stop(self) -> None:
        _terminate(self._apiserver)
        _terminate(self._etcd)

    def start_apiserver(self, *, timeout: float = 120.0) -> None:
        """Start kube-apiserver (again) and wait until /readyz answers ok."""
        log = (self.workdir / "kube-apiserver.log").open("ab")
        self._apiserver = subprocess.Popen(
            [str(self.binaries.kube_apiserver), *self._apiserver_flags()],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(timeout)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only; etcd keeps the data for a later restart."""
        _terminate(self._apiserver)
        self._apiserver = None

    def kill_apiserver(self) -> None:
        """Kill kube-apiserver at once: requests in flight may be applied with their replies lost."""
        if self._apiserver is not None and self._apiserver.poll() is None:
            self._apiserver.kill()
            self._apiserver.wait(timeout=15)
        self._apiserver = None

    # --- access ---------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster as the admin."""
        result = subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply_crds(self, timeout: float = 60.0) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        # Established comes a moment before the resource's storage serves requests (429 meanwhile).
        processes.wait_until(
            lambda: self.kubectl("get", "agentruns", "--all-namespaces", check=False).returncode == 0,
            timeout=timeout,
            interval=0.2,
            what="the AgentRun storage to serve requests",
        )

    def grant_operator_chart_rbac(self, timeout: float = 30.0) -> None:
        """Bind the operator identity to the roles the Helm chart renders, and nothing else.

        Operators under test then run with exactly the chart's cluster-scope permissions, so a
        call the chart does not grant fails here as it would in a real installation. The
        chart's leader-election Role grants Leases in the release namespace only; operators
        under test elect in their first watched namespace (each test has its own), so its
        rules are bound cluster-wide here, as ClusterRole ``LEASE_ROLE``.
        """
        if self.binaries.helm is None:
            raise ControlPlaneError("helm is required to render the chart's RBAC for the operator under test")
        rendered = subprocess.run(
            [
                str(self.binaries.helm), "template", OPERATOR_USER, str(ROOT / "charts" / "agentrun-operator"),
                "--show-only", "templates/rbac.yaml", "--set", "rbac.create=true", "--set", "rbac.scope=cluster",
                "--set", "admissionPolicy.enabled=false", "--kube-version", self.version(),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if rendered.returncode != 0:
            raise ControlPlaneError(f"helm template of the chart's RBAC failed: {rendered.stderr.strip()}")
        objects = {obj["kind"]: obj for obj in yaml.safe_load_all(rendered.stdout) if obj}
        subjects = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": OPERATOR_USER}]
        role, binding = objects["ClusterRole"], objects["ClusterRoleBinding"]
        binding["subjects"] = subjects
        lease_role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": LEASE_ROLE, "labels": objects["Role"]["metadata"]["labels"]},
            "rules": objects["Role"]["rules"],
        }
        lease_binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": LEASE_ROLE, "labels": objects["RoleBinding"]["metadata"]["labels"]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": LEASE_ROLE},
            "subjects": subjects,
        }
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([role, binding, lease_role, lease_binding]))
        # RBAC reaches the authorizer through informers: wait until every rule is in force.
        for rule in [*role["rules"], *lease_role["rules"]]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    kind, _, subresource = resource.partition("/")
                    check = ["auth", "can-i", rule["verbs"][0], f"{kind}.{group}".rstrip("."), "--all-namespaces"]
                    check += [f"--as={OPERATOR_USER}"] + ([f"--subresource={subresource}"] if subresource else [])
                    processes.wait_until(
                        functools.partial(self._allowed, check),
                        timeout=timeout,
                        interval=0.2,
                        what=f"{OPERATOR_USER} to be granted {' '.join(check[2:4])}",
                    )

    def _allowed(self, can_i: list[str]) -> bool:
        return self.kubectl(*can_i, check=False).stdout.strip() == "yes"

    def version(self) -> str:
        """The API server's gitVersion, such as ``v1.35.4``."""
        return str(json.loads(self._get("/version"))["gitVersion"])

    # --- internals ------------------------------------------------------------------

    def _write_identity(self) -> None:
        key = self.workdir / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        (self.workdir / "tokens.csv").write_text(
            f"{self.token},admin,admin,system:masters\n"
            # No groups: the operator may do only what grant_operator_chart_rbac binds it to.
            f"{self.operator_token},{OPERATOR_USER},{OPERATOR_USER}\n"
        )

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        log = (self.workdir / "etcd.log").open("ab")
        self._etcd = subprocess.Popen(
            [
                str(self.binaries.etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _apiserver_flags(self) -> list[str]:
        flags = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.workdir / 'sa.key'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--v=0",
        ]
        if self.audit_log is not None:
            policy = self.workdir / "audit-policy.yaml"
            # Metadata of every write: enough to count writes per verb and resource.
            policy.write_text(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
                "rules:\n- level: None\n  verbs: [get, list, watch]\n- level: Metadata\n"
            )
            flags += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
            ]
        return flags

    @property
    def ca_file(self) -> pathlib.Path:
        """What clients trust: kube-apiserver writes a self-signed serving certificate into --cert-dir."""
        return self.workdir / "certs" / "apiserver.crt"

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _get(self, path: str) -> str:
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=5) as response:
            return str(response.read().decode())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for name, process in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if process is not None and process.poll() is not None:
                    raise ControlPlaneError(f"{name} exited with {process.returncode}; see {self.workdir}/{name}.log")
            try:
                if self._get("/readyz") == "ok":
                    return
            except (OSError, ssl.SSLError) as error:  # not listening yet, or cert not written yet
                last_error = str(error)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f}s: {last_error}")

    def write_kubeconfig(self, path: pathlib.Path, user: str, token: str) -> pathlib.Path:
        """A kubeconfig for this cluster that authenticates with ``token``."""
        ca = self.ca_file
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster:\n    server: {self.server}\n    certificate-authority: {ca}\n"
            f"users:\n- name: {user}\n  user:\n    token: {token}\n"
            f"contexts:\n- name: local\n  context:\n    cluster: local\n    user: {user}\n"
            "current-context: local\n"
        )
        return path

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audited write so far (reads are not audited), oldest first."""
        if self.audit_log is None or not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def running(workdir: pathlib.Path | None = None, *, audit: bool = False) -> Iterator[LocalCluster]:
    """A started cluster for the duration of the block; always stopped afterwards."""
    binaries = find_binaries()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentrun-cluster-")))
        cluster = LocalCluster(workdir, binaries, audit=audit)
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it running until interrupted")
    up.add_argument("--dir", type=pathlib.Path, default=None)
    up.add_argument("--node", action="store_true", help="with a real node: pods run (root; one per machine)")
    sub.add_parser("binaries", help="build or locate the binaries and print their directory")
    sub.add_parser("prepare-node", help="install the node's Debian packages, build its binaries and images")
    args = parser.parse_args(argv)
    if args.command == "binaries":
        print(find_binaries().bin_dir)
        return 0
    if args.command == "prepare-node" or args.node:
        from localnode import commands  # here: localnode builds on this module

        if args.command == "prepare-node":
            return commands.prepare()
        return commands.up(args.dir or ROOT / ".demo" / "node")
    args.dir = args.dir or ROOT / ".demo" / "cluster"
    shutil.rmtree(args.dir, ignore_errors=True)
    with running(args.dir) as cluster:
        print(f"kube-apiserver {cluster.version()} ready at {cluster.server}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
