"""Shared test machinery: the cluster under test, the operator as a real process, polling."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

import localcluster
import manifests
import processes

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


SESSION_LINES = pytest.StashKey[list[str]]()
"""What the session runs against (API server, node), repeated in the summary by the root conftest."""


def announce(config: pytest.Config, line: str) -> None:
    """Say what the session runs on, past pytest's output capture, and again in its summary."""
    config.stash.setdefault(SESSION_LINES, []).append(line)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


wait_until = processes.wait_until
free_port = processes.free_port
AGENTRUN = processes.AGENTRUN


@dataclasses.dataclass(frozen=True)
class Write:
    """One audited write: verb, object name, subresource, HTTP status code."""

    verb: str
    name: str
    subresource: str
    code: int


@dataclasses.dataclass
class Cluster:
    """The API server the integration tier runs against."""

    kubeconfig: pathlib.Path
    kubectl_bin: pathlib.Path
    helm_bin: pathlib.Path | None
    local: localcluster.LocalCluster | None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Plugins take no global flags before their name; KUBECONFIG in env() serves them.
        flags = [] if args[:1] == ("agentrun",) else ["--kubeconfig", str(self.kubeconfig)]
        result = subprocess.run(
            [str(self.kubectl_bin), *flags, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            env=self.env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    @property
    def operator_kubeconfig(self) -> pathlib.Path:
        """Where operators under test authenticate from: their own identity on the local cluster."""
        return self.local.operator_kubeconfig if self.local else self.kubeconfig

    def operator_writes(self, namespace: str, resource: str = "agentruns") -> list[Write]:
        """Writes the operators under test made to ``resource`` in ``namespace``, per the API server's audit log."""
        if self.local is None:
            raise RuntimeError("counting writes needs the local control plane's audit log")
        writes = []
        for entry in self.local.audit_events():
            ref = entry.get("objectRef") or {}
            if (
                entry["user"]["username"] == localcluster.OPERATOR_USER
                and entry.get("stage") == "ResponseComplete"
                and ref.get("namespace") == namespace
                and ref.get("resource") == resource
            ):
                writes.append(
                    Write(
                        entry["verb"], ref.get("name", ""), ref.get("subresource", ""), entry["responseStatus"]["code"]
                    )
                )
        return writes

    def service_account_kubeconfig(self, namespace: str, name: str, path: pathlib.Path) -> pathlib.Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (a TokenRequest token)."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
        assert token.count(".") == 2, "expected a JWT from the TokenRequest API"
        user = f"system:serviceaccount:{namespace}:{name}"
        if self.local is not None:
            return self.local.write_kubeconfig(path, user, token)
        # An existing cluster (AGENTRUN_TEST_KUBECONFIG): its server and CA, this token.
        config = json.loads(self.kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
        config["users"] = [{"name": user, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = user
        path.write_text(yaml.safe_dump(config))
        return path

    def as_user(self, kubeconfig: pathlib.Path) -> Cluster:
        """This cluster, driven with ``kubeconfig`` (another user) instead of the admin's."""
        return dataclasses.replace(self, kubeconfig=kubeconfig)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for child processes: this cluster's kubeconfig, our tools first on PATH."""
        path = os.pathsep.join([str(AGENTRUN.parent), str(self.kubectl_bin.parent), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path, **extra}

    def apply(self, manifest: dict[str, Any] | str, namespace: str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind}/{name} failed: {result.stderr.strip()}")
        return dict(json.loads(result.stdout))

    def run_status(self, name: str, namespace: str) -> dict[str, Any]:
        body = self.get("agentrun", name, namespace) or {}
        return dict(body.get("status") or {})

    def wait_phase(self, name: str, namespace: str, *phases: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the run reaches one of ``phases`` (default: any terminal one); return the object."""
        wanted = phases or TERMINAL

        def reached() -> dict[str, Any] | None:
            body = self.get("agentrun", name, namespace)
            if body and (body.get("status") or {}).get("phase") in wanted:
                return body
            return None

        return wait_until(reached, timeout=timeout, what=f"AgentRun {namespace}/{name} to reach {'/'.join(wanted)}")

    def wait_released(self, name: str, namespace: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a finished run carries no finalizer (released right after its terminal write)."""

        def released() -> dict[str, Any] | None:
            body = self.get("agentrun", name, namespace)
            return body if body and not body["metadata"].get("finalizers") else None

        return wait_until(released, timeout=timeout, what=f"AgentRun {namespace}/{name} to lose its finalizer")

    def events_for(self, name: str, namespace: str) -> list[dict[str, Any]]:
        """Kubernetes Events about one AgentRun, oldest first."""
        result = self.kubectl(
            "get", "events", "-n", namespace, "-o", "json", "--field-selector", f"involvedObject.name={name}"
        )
        items = json.loads(result.stdout)["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or "")


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


agent_run = manifests.agent_run
echo_run = manifests.echo_run


TEST_LEASE = {"lease_duration_seconds": 8, "lease_renew_deadline_seconds": 6, "lease_retry_period_seconds": 1}


class OperatorProcess(processes.OperatorProcess):
    """The operator under test: this cluster's operator identity, our tools on PATH."""

    def __init__(self, cluster: Cluster, namespaces: list[str], log_dir: pathlib.Path, **settings: Any) -> None:
        # A short Lease, so that a test that kills an operator sees the next one lead within seconds.
        settings = {**TEST_LEASE, **settings}
        super().__init__(
            kubeconfig=cluster.operator_kubeconfig,
            namespaces=namespaces,
            log_dir=log_dir,
            base_env=cluster.env(),
            **settings,
        )
        self.cluster = cluster


@contextlib.contextmanager
def existing_cluster(kubeconfig: pathlib.Path) -> Iterator[Cluster]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        kubectl = str(localcluster.find_binaries().kubectl)
    helm = shutil.which("helm")
    yield Cluster(pathlib.Path(kubeconfig), pathlib.Path(kubectl), pathlib.Path(helm) if helm else None, None)


class WatchRecorder:
    """Records every version of the AgentRuns in a namespace, through `kubectl get -w`.

    If kubectl's watch ends (the API server may close watches), it is started again:
    its fresh listing repeats current versions, which is harmless to what tests check.
    """

    def __init__(self, cluster: Cluster, namespace: str, log_dir: pathlib.Path) -> None:
        self.path = log_dir / f"watch-{namespace}.jsonl"
        self.stderr_path = log_dir / f"watch-{namespace}.stderr"
        self.restarts = 0
        self._command = [
            str(cluster.kubectl_bin), "--kubeconfig", str(cluster.kubeconfig), "get", "agentruns",
            "-n", namespace, "--watch", "--output-watch-events", "-o", "json",
        ]  # fmt: skip
        self._file = self.path.open("ab")
        self._stderr = self.stderr_path.open("ab")
        self._stopped = threading.Event()
        self._process = self._spawn()
        self._keeper = threading.Thread(target=self._keep_watching, daemon=True)
        self._keeper.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command, stdout=self._file, stderr=self._stderr, start_new_session=True)

    def _keep_watching(self) -> None:
        while not self._stopped.is_set():
            if self._process.poll() is not None and not self._stopped.is_set():
                self.restarts += 1
                self._process = self._spawn()
            self._stopped.wait(0.2)

    def stop(self) -> None:
        self._stopped.set()
        self._keeper.join(timeout=5)
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._file.close()
        self._stderr.close()

    def terminal_names(self) -> set[str]:
        """Runs the watch has seen in a terminal phase."""
        return {
            event["object"]["metadata"]["name"]
            for event in self.events()
            if (event["object"].get("status") or {}).get("phase") in TERMINAL
        }

    def events(self) -> list[dict[str, Any]]:
        """Watch events so far: ``{"type": ADDED|MODIFIED|DELETED, "object": {...}}``."""
        text = self.path.read_text()
        decoder = json.JSONDecoder()
        events, index = [], 0
        while True:
            while index < len(text) and text[index].isspace():
                index += 1
            if index >= len(text):
                return events
            try:
                event, index = decoder.raw_decode(text, index)
            except ValueError:
                return events  # a partly written last object
            events.append(event)

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every status the run had, in order (one per watch event)."""
        return [
            dict(event["object"].get("status") or {})
            for event in self.events()
            if event["object"]["metadata"]["name"] == name
        ]
