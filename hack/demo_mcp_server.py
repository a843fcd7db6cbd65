"""A small MCP server for `make demo` and the tests: deterministic tools over streamable HTTP.

It listens on loopback only. Run it on its own with::

    .venv/bin/python hack/demo_mcp_server.py --port 8000     # serves http://127.0.0.1:8000/mcp

and stop it with Ctrl-C or SIGTERM, or start it inside another Python process with
:class:`ThreadedServer` (``with ThreadedServer(port=8000) as server: ... server.url``).

Tools:

- ``add(a, b)``: the sum of two integers;
- ``lookup_incident(incident_id)``: a fixed incident record; an unknown one is a tool error;
- ``fail(message)``: always a tool error, for showing how errors reach the model;
- ``slow(seconds)``: answers after waiting, for timeouts;
- ``echo_header(name)``: repeats a header of the request, as a careless server might
  repeat a credential (to show that the run masks it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from mcp.server import mcpserver
from mcp.server.mcpserver import exceptions

PATH = "/mcp"
DEFAULT_PORT = 8000
MAX_SLOW_SECONDS = 300.0
"""Longest wait ``slow`` accepts, so a stray call cannot hold the server forever."""
SHUTDOWN_SECONDS = 3
"""How long stopping waits for calls under way (a ``slow`` one, say) before it drops them."""

INCIDENTS: dict[int, dict[str, Any]] = {
    42: {"id": 42, "title": "checkout latency above SLO", "severity": "high", "status": "mitigated"},
    7: {"id": 7, "title": "nightly backup job failed", "severity": "low", "status": "resolved"},
}


@dataclasses.dataclass(frozen=True)
class Call:
    """One tool call the server answered."""

    tool: str
    args: dict[str, Any]


@dataclasses.dataclass
class Recorder:
    """What the server saw: the tool calls it ran and the headers of every HTTP request."""

    calls: list[Call] = dataclasses.field(default_factory=list)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def call(self, tool: str, **args: Any) -> None:
        with self._lock:
            self.calls.append(Call(tool, args))

    def request(self, headers: dict[str, str]) -> None:
        with self._lock:
            self.headers.append(headers)


def build_server(recorder: Recorder) -> mcpserver.MCPServer:
    # MCPServer configures the root logger when it is built unless the root logger already
    # has a handler: a host process (the tests) keeps its own logging as it is.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        server: mcpserver.MCPServer = mcpserver.MCPServer("agentrun-demo-tools", log_level="WARNING")
    finally:
        root.removeHandler(guard)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        recorder.call("add", a=a, b=b)
        return a + b

    @server.tool()
    def lookup_incident(incident_id: int) -> dict[str, Any]:
        """Look up an incident by its number."""
        recorder.call("lookup_incident", incident_id=incident_id)
        if incident_id not in INCIDENTS:
            raise exceptions.ToolError(f"incident {incident_id} not found")
        return INCIDENTS[incident_id]

    @server.tool()
    def fail(message: str = "this tool always fails") -> str:
        """Fail with the given message."""
        recorder.call("fail", message=message)
        raise exceptions.ToolError(message)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answer after waiting the given number of seconds."""
        recorder.call("slow", seconds=seconds)
        await asyncio.sleep(min(max(seconds, 0.0), MAX_SLOW_SECONDS))
        return f"waited {seconds:g} seconds"

    @server.tool()
    def echo_header(name: str, ctx: mcpserver.Context) -> str:
        """The value of a header of this HTTP request, as a careless server might repeat a credential."""
        recorder.call("echo_header", name=name)
        return (ctx.headers or {}).get(name.lower(), "")

    return server


def build_app(recorder: Recorder) -> Any:
    """The ASGI application: the MCP endpoint at ``/mcp``, recording each request's headers."""
    app = build_server(recorder).streamable_http_app(streamable_http_path=PATH)

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            recorder.request({key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]})
        await app(scope, receive, send)

    return recording


def loopback_socket(host: str, port: int) -> socket.socket:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"demo MCP server: {host} is not a loopback address; it serves this machine only")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class ThreadedServer:
    """The server on a thread of its own, on ``port`` (0: a free one); ``url`` says where."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.recorder = Recorder()
        self._socket = loopback_socket(host, port)
        bound_host, bound_port = self._socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}{PATH}"
        config = uvicorn.Config(
            build_app(self.recorder),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="demo-mcp-server", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"demo MCP server did not start within {timeout:g}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ThreadedServer(args.host, args.port) as server:
        print(f"demo MCP server listening on {server.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
