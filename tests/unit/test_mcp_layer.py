"""The tools.mcp layer without a server: its config, its headers Secret, and how it classifies failures."""

from __future__ import annotations

import json
from typing import Any

import fakes
import pydantic_ai
import pytest
from fastmcp import exceptions as fastmcp_exceptions
from mcp import types as mcp_types
from pydantic_ai import tools as ai_tools
from pydantic_ai import toolsets as ai_toolsets

from agentrun.api import models
from agentrun.layers import base, errors, registry
from agentrun.layers.builtin import mcp_tools

URL = "http://127.0.0.1:8000/mcp"


def layer(**config: Any) -> mcp_tools.MCPToolsLayer:
    return mcp_tools.MCPToolsLayer("tools", {"url": URL, **config})


def test_the_layer_type_is_registered(layer_registry: registry.LayerRegistry) -> None:
    assert layer_registry.type_ids["tools.mcp"] is mcp_tools.MCPToolsLayer


def test_config_is_camel_case_with_defaults() -> None:
    config = layer(
        headersSecretRef={"name": "mcp-headers", "key": "headers.json"}, allowedTools=["add"], timeoutSeconds=5
    ).config
    assert config.headers_secret_ref == models.SecretKeyRef(name="mcp-headers", key="headers.json")
    assert config.allowed_tools == ["add"]
    assert config.timeout_seconds == 5
    assert layer().config.timeout_seconds == mcp_tools.DEFAULT_TIMEOUT_SECONDS
    assert layer().config.allowed_tools is None


@pytest.mark.parametrize(
    ("config", "detail"),
    [
        pytest.param({"url": "ftp://host/mcp"}, "url must be an http:// or https:// URL", id="not-http"),
        pytest.param({"url": "tools.internal:8000/mcp"}, "url must be an http:// or https:// URL", id="no-scheme"),
        pytest.param({"url": "http:///mcp"}, "url must name a host", id="no-host"),
        pytest.param({"url": "http://host:99999/mcp"}, "url is not a valid URL", id="bad-port"),
        pytest.param({"url": "https://user:hunter2@host/mcp"}, "must not hold credentials", id="credentials-in-url"),
        pytest.param({"url": "http://host/mcp#part"}, "must not have a fragment", id="fragment"),
        pytest.param({"url": ""}, "url: String should have at least 1 character", id="empty"),
        pytest.param({"url": URL, "allowedTools": [""]}, "allowedTools.0", id="empty-tool-name"),
        pytest.param({"url": URL, "timeoutSeconds": 0}, "timeoutSeconds", id="zero-timeout"),
        pytest.param(
            {"url": URL, "headers": {"X-Token": "abc"}}, "headers: Extra inputs are not permitted", id="inline-headers"
        ),
        pytest.param({"url": URL, "headersSecretRef": {"name": "s"}}, "headersSecretRef.key", id="ref-without-key"),
        pytest.param({}, "url: Field required", id="no-url"),
    ],
)
def test_invalid_config_is_an_invalid_request_naming_the_field(config: dict[str, Any], detail: str) -> None:
    with pytest.raises(errors.InvalidRequest) as failed:
        mcp_tools.MCPToolsLayer("tools", config)
    assert failed.value.message.startswith("Layer 'tools' (tools.mcp) has invalid config: ")
    assert detail in failed.value.message
    assert "hunter2" not in failed.value.message


# --- the headers Secret -------------------------------------------------------------------


class Secrets:
    def __init__(self, value: str) -> None:
        self.value = value
        self.masked: list[str] = []

    async def read(self, name: str, key: str) -> str:
        assert (name, key) == ("mcp-headers", "headers.json")
        return self.value

    def context(self) -> base.RunContext:
        return base.RunContext(namespace=fakes.NAMESPACE, read_secret=self.read, mask_secret=self.masked.append)


REF = {"name": "mcp-headers", "key": "headers.json"}


async def test_headers_come_from_the_secret_and_each_value_is_masked() -> None:
    secrets = Secrets(json.dumps({"Authorization": "Bearer tok-123456", "X-Tenant": "team-a"}))
    plan = base.AgentPlan()
    await layer(headersSecretRef=REF).enter(plan, secrets.context(), None)
    [toolset] = plan.toolsets
    assert isinstance(toolset, mcp_tools.ServerTools)
    assert set(secrets.masked) == {"Bearer tok-123456", "tok-123456", "team-a"}


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        pytest.param("Bearer tok-123456", "must hold a JSON object of header names to string values", id="not-json"),
        pytest.param('["tok-123456"]', "must hold a JSON object of header names to string values", id="a-list"),
        pytest.param('{"X-Retries": 3}', "must hold a JSON object of header names to string values", id="a-number"),
        pytest.param(
            '{"X Token": "tok-123456"}', "holds a header name that is not a valid HTTP header name", id="space"
        ),
        pytest.param(
            '{"X-Token": "tok\\r\\nX-Admin: 1"}', "the value of header 'X-Token' holds a line break", id="crlf"
        ),
    ],
)
async def test_a_malformed_headers_secret_is_an_invalid_request_that_never_shows_it(value: str, detail: str) -> None:
    with pytest.raises(errors.InvalidRequest) as failed:
        await layer(headersSecretRef=REF).enter(base.AgentPlan(), Secrets(value).context(), None)
    assert failed.value.message.startswith(
        "headersSecretRef of layer 'tools': key 'headers.json' of Secret 'mcp-headers'"
    )
    assert detail in failed.value.message
    assert "tok" not in failed.value.message


async def test_without_headers_the_secret_reader_is_not_called(run_context: base.RunContext) -> None:
    plan = base.AgentPlan()
    await layer().enter(plan, run_context, None)
    assert len(plan.toolsets) == 1


def test_the_layer_keeps_no_state_in_the_session() -> None:
    assert layer().leave(base.AgentOutcome(output="x", messages=[])) == {}


# --- failures, classified -----------------------------------------------------------------


class FakeServer(ai_toolsets.AbstractToolset[None]):
    """Stands in for pydantic-ai's MCP toolset: offers ``tools``, fails as told."""

    def __init__(self, *, tools: tuple[str, ...] = ("add", "lookup_incident"), fail: BaseException | None = None):
        self.tools = tools
        self.fail = fail
        self.entered = 0
        self.exited = 0

    @property
    def id(self) -> str | None:
        return None

    async def __aenter__(self) -> FakeServer:
        if isinstance(self.fail, ConnectionError):
            raise RuntimeError("Client failed to connect: All connection attempts failed") from self.fail
        self.entered += 1
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        self.exited += 1
        if isinstance(self.fail, OSError) and not isinstance(self.fail, ConnectionError):
            raise self.fail
        return None

    async def get_tools(self, ctx: ai_tools.RunContext[None]) -> dict[str, ai_toolsets.ToolsetTool[None]]:
        return {
            name: ai_toolsets.ToolsetTool(
                toolset=self,
                tool_def=ai_tools.ToolDefinition(name=name),
                max_retries=1,
                args_validator=None,  # type: ignore[arg-type]
            )
            for name in self.tools
        }

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: ai_tools.RunContext[None], tool: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        return "ok"


def server_tools(fake: FakeServer, allowed: tuple[str, ...] = ()) -> mcp_tools.ServerTools:
    return mcp_tools.ServerTools(fake, layer="tools", url=URL, allowed=frozenset(allowed), timeout_seconds=3)


async def test_a_server_that_cannot_be_reached_fails_the_run_naming_it() -> None:
    tools = server_tools(FakeServer(fail=ConnectionError("refused")))
    with pytest.raises(errors.ToolsUnavailable) as failed:
        await tools.__aenter__()
    assert failed.value.reason is models.Reason.TOOLS_UNAVAILABLE
    assert failed.value.message == (
        f"MCP server {URL} (layer 'tools') could not be reached: "
        "Client failed to connect: All connection attempts failed; refused"
    )


async def test_a_session_that_does_not_close_cleanly_leaves_the_outcome_alone(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeServer(fail=OSError("connection reset"))
    tools = server_tools(fake)
    await tools.__aenter__()
    assert await tools.__aexit__(None, None, None) is None
    assert fake.exited == 1
    assert "the MCP session did not close cleanly: connection reset" in caplog.text


async def test_allowed_tools_narrow_what_the_model_sees() -> None:
    tools = server_tools(FakeServer(), allowed=("add",))
    assert list(await tools.get_tools(None)) == ["add"]  # type: ignore[arg-type]
    assert sorted(await server_tools(FakeServer()).get_tools(None)) == ["add", "lookup_incident"]  # type: ignore[arg-type]


async def test_allowed_tools_the_server_does_not_offer_are_an_invalid_request() -> None:
    tools = server_tools(FakeServer(), allowed=("add", "delete", "drop"))
    with pytest.raises(errors.InvalidRequest) as failed:
        await tools.get_tools(None)  # type: ignore[arg-type]
    assert failed.value.message == (
        f"allowedTools of layer 'tools' names tools that MCP server {URL} does not offer: delete, drop "
        "(it offers: add, lookup_incident)"
    )


def _retry_from(code: int, message: str) -> pydantic_ai.ModelRetry:
    retry = pydantic_ai.ModelRetry(message)
    retry.__cause__ = fastmcp_exceptions.McpError(code, message)
    return retry


async def call(tools: mcp_tools.ServerTools) -> Any:
    return await tools.call_tool("add", {"a": 1, "b": 2}, None, None)  # type: ignore[arg-type]


async def test_a_call_that_times_out_is_a_failed_call_for_the_model() -> None:
    tools = server_tools(FakeServer(fail=_retry_from(mcp_types.REQUEST_TIMEOUT, "Request 'tools/call' timed out")))
    with pytest.raises(pydantic_ai.ToolFailed) as failed:
        await call(tools)
    assert failed.value.message == "tool 'add' did not answer within 3 seconds"


async def test_a_connection_lost_during_a_call_fails_the_run_naming_the_server() -> None:
    tools = server_tools(FakeServer(fail=_retry_from(mcp_types.CONNECTION_CLOSED, "Connection closed")))
    with pytest.raises(errors.ToolsUnavailable) as failed:
        await call(tools)
    assert failed.value.message == f"MCP server {URL} (layer 'tools') closed the connection during a call of tool 'add'"


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(pydantic_ai.ModelRetry("invalid arguments"), id="retry"),
        pytest.param(_retry_from(mcp_types.INVALID_PARAMS, "invalid params"), id="protocol-error-for-the-model"),
        pytest.param(pydantic_ai.ToolFailed("incident 9 not found"), id="tool-error"),
    ],
)
async def test_what_the_model_can_act_on_goes_back_to_the_model(signal: Exception) -> None:
    with pytest.raises(type(signal)) as raised:
        await call(server_tools(FakeServer(fail=signal)))
    assert raised.value is signal


async def test_an_unexpected_failure_during_a_call_fails_the_run_naming_the_server() -> None:
    with pytest.raises(errors.ToolsUnavailable) as failed:
        await call(server_tools(FakeServer(fail=OSError("broken pipe"))))
    assert failed.value.message == f"MCP server {URL} (layer 'tools') failed during a call of tool 'add': broken pipe"


def test_a_conflict_between_two_servers_names_both_layers_and_the_way_out() -> None:
    tools = server_tools(FakeServer())
    assert tools.label == f"tools.mcp layer 'tools' ({URL})"
    assert "allowedTools" in tools.tool_name_conflict_hint
