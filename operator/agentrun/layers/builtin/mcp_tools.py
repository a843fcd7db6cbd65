"""``tools.mcp``: the tools of an MCP server, reached over streamable HTTP through pydantic-ai.

The layer connects when the run starts and closes its session when the run ends, however
it ends. A composition may hold several ``tools.mcp`` layers, one per server; two servers
offering a tool of the same name fail the run unless ``allowedTools`` picks one of them.

What the model sees:

- the server's tools, or only those ``allowedTools`` names;
- a tool's error (the server answered that the call failed) as the call's result, so the
  model can adapt; the run goes on;
- a call the server does not answer within ``timeoutSeconds`` as a failed call, likewise.

What fails the run, with reason ``ToolsUnavailable`` and the server's URL in the message:
a server that cannot be reached or does not complete the MCP handshake when the run
starts, or that drops the connection during a call.

``headersSecretRef`` names a Secret key holding a JSON object of HTTP header names to
values, such as ``{"Authorization": "Bearer ..."}``, sent with every request to the
server. The Secret is read like a model's API key, so the values are masked wherever the
run reports anything: status, Kubernetes Events and the operator's log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any

import pydantic
from pydantic_ai import exceptions as ai_exceptions
from pydantic_ai import tools as ai_tools
from pydantic_ai import toolsets as ai_toolsets

from agentrun.api import models
from agentrun.layers import base, errors

if TYPE_CHECKING:
    from pydantic_ai import mcp as ai_mcp

DEFAULT_TIMEOUT_SECONDS = 30.0
"""How long connecting, and each tool call, may take when ``timeoutSeconds`` does not say."""
MAX_ALLOWED_TOOLS = 256
MAX_NAMES_SHOWN = 20
"""Most tool names a failure message lists."""

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP header name (an RFC 9110 token)."""

# Raised by pydantic-ai's own machinery while it calls a tool: they steer the agent loop.
_AGENT_SIGNALS = (
    ai_exceptions.ModelRetry,
    ai_exceptions.ToolFailed,
    ai_exceptions.CallDeferred,
    ai_exceptions.ApprovalRequired,
    errors.RunFailure,
)

ToolName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=128)]

logger = logging.getLogger(__name__)


class MCPToolsConfig(base.LayerConfig):
    url: str = pydantic.Field(
        min_length=1,
        max_length=2048,
        description=(
            "Streamable HTTP endpoint of the MCP server, such as `http://tools.team-a.svc:8000/mcp`. "
            "It appears in the run's status: put credentials in `headersSecretRef`, never in the URL."
        ),
    )
    headers_secret_ref: models.SecretKeyRef | None = pydantic.Field(
        None,
        description=(
            "Secret key holding a JSON object of HTTP header names to values sent with every request to the "
            'server, such as `{"Authorization": "Bearer ..."}`. The values are masked like API keys.'
        ),
    )
    allowed_tools: list[ToolName] | None = pydantic.Field(
        None,
        max_length=MAX_ALLOWED_TOOLS,
        description=(
            "Offer the model only these tools of the server; absent or empty offers all of them. "
            "A name the server does not offer fails the run."
        ),
    )
    timeout_seconds: float = pydantic.Field(
        DEFAULT_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description=(
            "How long connecting to the server may take, and how long one tool call may wait for its answer "
            f"(default {DEFAULT_TIMEOUT_SECONDS:g}); a call that takes longer is reported to the model as failed."
        ),
    )

    @pydantic.field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - parsing the port is what raises on a malformed one
        except ValueError:
            raise ValueError("url is not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("url must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("url must name a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url must not hold credentials: put them in headersSecretRef")
        if parts.fragment:
            raise ValueError("url must not have a fragment")
        return value


class MCPToolsLayer(base.Layer):
    """Offers the model the tools of one MCP server."""

    type_id = "tools.mcp"
    config_model = MCPToolsConfig
    config: MCPToolsConfig

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        headers = await self._headers(context)
        # The MCP client stack takes seconds to import the first time: off the event loop, so
        # the runs already under way keep going meanwhile.
        await asyncio.to_thread(importlib.import_module, "pydantic_ai.mcp")
        plan.toolsets.append(
            ServerTools(
                wrapped=_mcp_toolset(self.config, headers),
                layer=self.name,
                url=self.config.url,
                allowed=frozenset(self.config.allowed_tools or ()),
                timeout_seconds=self.config.timeout_seconds,
            )
        )

    async def _headers(self, context: base.RunContext) -> dict[str, str] | None:
        ref = self.config.headers_secret_ref
        if ref is None:
            return None
        where = f"headersSecretRef of layer '{self.name}': key '{ref.key}' of Secret '{ref.name}'"
        text = await context.read_secret(ref.name, ref.key)
        try:
            headers = json.loads(text)
        except ValueError:
            headers = None
        if not isinstance(headers, dict) or not all(isinstance(value, str) for value in headers.values()):
            raise errors.InvalidRequest(f"{where} must hold a JSON object of header names to string values")
        for name, value in headers.items():
            context.mask_secret(value)
            scheme, _, credentials = value.partition(" ")
            if credentials and scheme.isalpha():
                context.mask_secret(credentials.strip())  # `Bearer <token>`: the token alone is secret too
            if not _HEADER_NAME.fullmatch(name) or len(name) > 256:
                raise errors.InvalidRequest(f"{where} holds a header name that is not a valid HTTP header name")
            if any(character in value for character in "\r\n\0"):
                raise errors.InvalidRequest(f"{where}: the value of header {name!r} holds a line break")
        return headers


def _mcp_toolset(config: MCPToolsConfig, headers: dict[str, str] | None) -> ai_mcp.MCPToolset[None]:
    # The MCP client stack costs ~40 MB of memory: load it when a run first needs it, not at start-up.
    from fastmcp.client import transports as fastmcp_transports
    from pydantic_ai import mcp as ai_mcp

    # An explicit transport: streamable HTTP whatever the URL looks like (a URL ending in
    # /sse would otherwise select the older SSE transport).
    transport = fastmcp_transports.StreamableHttpTransport(config.url, headers=headers)
    return ai_mcp.MCPToolset(
        transport,
        tool_error_behavior="failed",
        init_timeout=config.timeout_seconds,
        read_timeout=config.timeout_seconds,
    )


@dataclasses.dataclass
class ServerTools(ai_toolsets.WrapperToolset[None]):
    """One server's toolset, narrowed to the allowed tools, with its failures classified for the run."""

    layer: str = ""
    url: str = ""
    allowed: frozenset[str] = frozenset()
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def label(self) -> str:
        return f"tools.mcp layer '{self.layer}' ({self.url})"

    @property
    def tool_name_conflict_hint(self) -> str:
        return "Set allowedTools on the layers so that only one of them offers it."

    def _unavailable(self, what: str, error: BaseException | None = None) -> errors.ToolsUnavailable:
        detail = f": {_describe(error)}" if error is not None else ""
        return errors.ToolsUnavailable(f"MCP server {self.url} (layer '{self.layer}') {what}{detail}")

    async def __aenter__(self) -> ServerTools:
        try:
            await self.wrapped.__aenter__()
        except Exception as error:  # whatever stops the session from opening, the server is unusable
            raise self._unavailable("could not be reached", error) from None
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        try:
            return await self.wrapped.__aexit__(*args)
        except Exception as error:  # the session is torn down either way; the run's own outcome stands
            logger.warning("%s: the MCP session did not close cleanly: %s", self.label, _describe(error))
            return None

    async def get_tools(self, ctx: ai_tools.RunContext[None]) -> dict[str, ai_toolsets.ToolsetTool[None]]:
        try:
            tools = await self.wrapped.get_tools(ctx)
        except _AGENT_SIGNALS:
            raise
        except Exception as error:  # listing tools is the server's first answer: any failure means unusable
            raise self._unavailable("did not list its tools", error) from None
        if not self.allowed:
            return tools
        missing = sorted(self.allowed - tools.keys())
        if missing:
            raise errors.InvalidRequest(
                f"allowedTools of layer '{self.layer}' names tools that MCP server {self.url} does not offer: "
                f"{_names(missing)} (it offers: {_names(sorted(tools)) or 'none'})"
            )
        return {name: tool for name, tool in tools.items() if name in self.allowed}

    async def call_tool(
        self,
        name: str,
        tool_args: dict[str, Any],
        ctx: ai_tools.RunContext[None],
        tool: ai_toolsets.ToolsetTool[None],
    ) -> Any:
        try:
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        except ai_exceptions.ModelRetry as retry:
            # pydantic-ai hands the MCP client's own failures to the model as retries; two are not the model's to fix.
            from mcp import types as mcp_types

            code = _client_error_code(retry)
            if code == mcp_types.CONNECTION_CLOSED:
                raise self._unavailable(f"closed the connection during a call of tool '{name}'") from None
            if code == mcp_types.REQUEST_TIMEOUT:
                raise ai_exceptions.ToolFailed(
                    f"tool '{name}' did not answer within {self.timeout_seconds:g} seconds"
                ) from None
            raise
        except _AGENT_SIGNALS:
            raise
        except Exception as error:  # the call never got an answer from the server: it is no longer usable
            raise self._unavailable(f"failed during a call of tool '{name}'", error) from None


def _client_error_code(error: BaseException) -> int | None:
    """The JSON-RPC code of the MCP error behind ``error``, if there is one."""
    from fastmcp import exceptions as fastmcp_exceptions

    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, fastmcp_exceptions.McpError):
            return cause.error.code
        cause = cause.__cause__
    return None


def _describe(error: BaseException) -> str:
    """The most telling text in an error and its causes."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(texts) < 4:
        text = str(current).strip()
        if isinstance(current, TimeoutError) and not text:
            text = "timed out"
        if text and not any(text in seen for seen in texts):
            texts.append(text)
        current = current.__cause__
    return "; ".join(texts) or type(error).__name__


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown if len(names) <= MAX_NAMES_SHOWN else f"{shown} and {len(names) - MAX_NAMES_SHOWN} more"
