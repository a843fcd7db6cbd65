"""A local MCP server for tests: streamable HTTP on 127.0.0.1, a free port, a thread of its own.

It serves the demo's deterministic tools (see ``hack/demo_mcp_server.py``): ``add``,
``lookup_incident``, ``fail``, ``slow`` and ``echo_header``, and records every tool call
and the headers of every HTTP request for assertions::

    with MCPTestServer() as server:
        ... server.url ...
        assert server.calls("add") == [{"a": 2, "b": 3}]
"""

from __future__ import annotations

import socket
from typing import Any

import demo_mcp_server

INCIDENTS = demo_mcp_server.INCIDENTS


class MCPTestServer(demo_mcp_server.ThreadedServer):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        """Arguments of the calls the server ran, oldest first (of ``tool`` only, if named)."""
        return [call.args for call in list(self.recorder.calls) if tool is None or call.tool == tool]

    def header_values(self, name: str) -> list[str]:
        """The values header ``name`` had in the requests the server received."""
        return [headers[name.lower()] for headers in list(self.recorder.headers) if name.lower() in headers]


def unused_url() -> str:
    """An MCP URL on loopback where nothing listens: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"
