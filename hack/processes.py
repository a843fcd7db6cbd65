"""Processes the tests, the demo and the benchmarks share: polling, ports, the operator.

``OperatorProcess`` starts ``agentrun operator`` exactly as the container image
does (same entry point, settings from ``AGENTRUN_*`` variables) and knows how to
wait for it, signal it, kill it and read its log.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

AGENTRUN = pathlib.Path(sys.executable).parent / "agentrun"

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``agentrun operator`` as a child process, exactly as the container runs it."""

    def __init__(
        self,
        *,
        kubeconfig: pathlib.Path,
        namespaces: list[str],
        log_dir: pathlib.Path,
        base_env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.liveness_port = free_port()
        self.instance = str(settings.pop("instance", f"operator-{self.liveness_port}"))
        self.log_path = log_dir / f"operator-{self.liveness_port}.log"
        env = {
            "AGENTRUN_NAMESPACES": ",".join(namespaces),
            "AGENTRUN_INSTANCE": self.instance,
            "AGENTRUN_LIVENESS_PORT": str(self.liveness_port),
            "AGENTRUN_METRICS_PORT": "0",
            "AGENTRUN_LOG_FORMAT": "text",
            "AGENTRUN_LOG_LEVEL": "INFO",
        }
        env.update({f"AGENTRUN_{key.upper()}": str(value) for key, value in settings.items()})
        self.env = {**(base_env or os.environ), **env, "KUBECONFIG": str(kubeconfig)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(AGENTRUN), "operator"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait_ready:
            self.wait_ready()
        return self

    def probe(self, path: str = "/readyz") -> dict[str, Any] | None:
        """The JSON answer of a health endpoint, whatever its status code; ``None`` if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}{path}", timeout=2) as response:
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as error:  # 503 while not ready still carries the state
            return dict(json.loads(error.read() or b"{}"))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            state = self.probe("/readyz")
            return bool(state and state.get("ready"))

        wait_until(ready, timeout=timeout, what="the operator to become ready")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float | None) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
