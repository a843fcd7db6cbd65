"""`tools.mcp` against a local MCP server: the operator as a real process, runs on the real API server.

The server (tests/mcp_server.py) runs in this process on 127.0.0.1 and records every call
and every request's headers. The last tests drive the compositor directly against the same
server, to show that a run's MCP session is closed however the run ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

import fake_llm
import harness
import mcp_server
from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry

pytestmark = pytest.mark.integration

INCIDENT_42 = json.dumps(mcp_server.INCIDENTS[42], separators=(",", ":"))


@pytest.fixture(scope="module")
def tools() -> Iterator[mcp_server.MCPTestServer]:
    with mcp_server.MCPTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def llm() -> Iterator[fake_llm.FakeLLM]:
    server = fake_llm.FakeLLM().start()
    yield server
    server.stop()


def tools_layer(url: str, **config: Any) -> dict[str, Any]:
    return {"name": "tools", "type": "tools.mcp", "config": {"url": url, **config}}


def echo_tools_run(
    name: str, url: str, calls: list[dict[str, Any]], *, prompt: str = "What about incident 42?", **spec: Any
) -> dict[str, Any]:
    tools_config = spec.pop("tools_config", {})
    return harness.agent_run(
        name,
        [
            {"name": "llm", "type": "model.echo", "config": {"toolCalls": calls}},
            {"name": "prompt", "type": "plain.prompt", "config": {"user": prompt}},
            tools_layer(url, **tools_config),
        ],
        **spec,
    )


def tool_events(status: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["type"], e["data"]) for e in status["events"] if e["type"] in ("tool_call", "tool_result")]


def test_echo_calls_mcp_tools_and_status_shows_each_call_and_result(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    calls = [{"tool": "lookup_incident", "args": {"incident_id": 42}}, {"tool": "add", "args": {"a": 2, "b": 3}}]
    before = len(tools.calls())
    cluster.apply(echo_tools_run("echo-tools", tools.url, calls), namespace)
    status = cluster.wait_phase("echo-tools", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == f"echo: What about incident 42? | lookup_incident: {INCIDENT_42} | add: 5"
    assert tools.calls()[before:] == [{"incident_id": 42}, {"a": 2, "b": 3}]
    assert tool_events(status) == [
        ("tool_call", {"tool": "lookup_incident", "callId": "echo-call-1", "args": '{"incident_id":42}'}),
        (
            "tool_result",
            {"tool": "lookup_incident", "callId": "echo-call-1", "outcome": "success", "result": INCIDENT_42},
        ),
        ("tool_call", {"tool": "add", "callId": "echo-call-2", "args": '{"a":2,"b":3}'}),
        ("tool_result", {"tool": "add", "callId": "echo-call-2", "outcome": "success", "result": "5"}),
    ]
    assert [e["type"] for e in status["events"]] == [
        "run_started",
        "model_request",
        "tool_call",
        "tool_result",
        "model_request",
        "tool_call",
        "tool_result",
        "model_request",
        "run_succeeded",
    ]
    # Each request to echo counts every word it heard: the prompt (5), then the results.
    assert status["usage"]["requests"] == 3


def test_openai_model_calls_an_mcp_tool_through_the_provider(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    tools: mcp_server.MCPTestServer,
    llm: fake_llm.FakeLLM,
) -> None:
    layers = [
        {"name": "llm", "type": "model.openai", "config": {"model": "call-lookup_incident", "baseURL": llm.base_url}},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "What about incident 42?"}},
        tools_layer(tools.url, allowedTools=["lookup_incident", "add"]),
    ]
    cluster.apply(harness.agent_run("openai-tools", layers), namespace)
    status = cluster.wait_phase("openai-tools", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == f"lookup_incident said: {INCIDENT_42}"
    first, second = llm.bodies("call-lookup_incident")[-2:]
    # The provider was offered the allowed tools only, with the server's own schemas.
    offered = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
    assert sorted(offered) == ["add", "lookup_incident"]
    assert offered["lookup_incident"]["parameters"]["required"] == ["incident_id"]
    # Its call went to the MCP server, and the result came back to it as a tool message.
    assert {"role": "tool", "tool_call_id": "call_1", "content": INCIDENT_42} in second["messages"]
    assert tool_events(status) == [
        ("tool_call", {"tool": "lookup_incident", "callId": "call_1", "args": '{"incident_id":42}'}),
        ("tool_result", {"tool": "lookup_incident", "callId": "call_1", "outcome": "success", "result": INCIDENT_42}),
    ]
    assert status["usage"] == {"requests": 2, "inputTokens": 24, "outputTokens": 10}


def test_allowed_tools_hide_the_others(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    calls = [{"tool": "fail"}, {"tool": "add", "args": {"a": 1, "b": 1}}]
    before = len(tools.calls())
    cluster.apply(echo_tools_run("allowed", tools.url, calls, tools_config={"allowedTools": ["add"]}), namespace)
    status = cluster.wait_phase("allowed", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    # The hidden tool never reached the server: the model was told it does not exist.
    assert tools.calls()[before:] == [{"a": 1, "b": 1}]
    [refused, added] = [data for kind, data in tool_events(status) if kind == "tool_result"]
    assert refused["outcome"] == "retried"
    assert refused["result"].startswith("Unknown tool name: 'fail'. Available tools: 'add'")
    assert added["result"] == "2"


def test_allowed_tools_the_server_lacks_fail_the_run(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    cluster.apply(echo_tools_run("lacking", tools.url, [], tools_config={"allowedTools": ["add", "rm"]}), namespace)
    status = cluster.wait_phase("lacking", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRequest")
    assert status["message"] == (
        f"allowedTools of layer 'tools' names tools that MCP server {tools.url} does not offer: rm "
        "(it offers: add, echo_header, fail, lookup_incident, slow)"
    )


def test_a_tool_error_goes_back_to_the_model_and_the_run_succeeds(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    calls = [
        {"tool": "lookup_incident", "args": {"incident_id": 9}},
        {"tool": "fail", "args": {"message": "disk full"}},
    ]
    cluster.apply(echo_tools_run("tool-error", tools.url, calls), namespace)
    status = cluster.wait_phase("tool-error", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    results = [data for kind, data in tool_events(status) if kind == "tool_result"]
    assert [(r["outcome"], r["result"]) for r in results] == [
        ("failed", "Error executing tool lookup_incident: incident 9 not found"),
        ("failed", "Error executing tool fail: disk full"),
    ]
    assert "incident 9 not found" in status["output"]
    assert "disk full" in status["output"]


def test_a_slow_tool_is_a_failed_call_after_the_timeout(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    calls = [{"tool": "slow", "args": {"seconds": 30}}]
    cluster.apply(echo_tools_run("slow-tool", tools.url, calls, tools_config={"timeoutSeconds": 1}), namespace)
    status = cluster.wait_phase("slow-tool", namespace, timeout=30)["status"]
    assert status["phase"] == "Succeeded", status
    [result] = [data for kind, data in tool_events(status) if kind == "tool_result"]
    assert (result["outcome"], result["result"]) == ("failed", "tool 'slow' did not answer within 1 seconds")


def test_an_unreachable_server_fails_the_run_naming_its_url(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    url = mcp_server.unused_url()
    cluster.apply(echo_tools_run("unreachable", url, [{"tool": "add"}]), namespace)
    status = cluster.wait_phase("unreachable", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ToolsUnavailable")
    assert status["message"] == (
        f"MCP server {url} (layer 'tools') could not be reached: "
        "Client failed to connect: All connection attempts failed"
    )
    assert [e["type"] for e in status["events"]] == ["run_started", "run_failed"]


def test_a_malformed_url_is_an_invalid_request(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.apply(echo_tools_run("malformed", "tools.internal:8000/mcp", []), namespace)
    status = cluster.wait_phase("malformed", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRequest")
    assert status["message"] == (
        "Layer 'tools' (tools.mcp) has invalid config: url: Value error, url must be an http:// or https:// URL"
    )


def test_max_tool_calls_stops_the_run_at_the_exact_limit(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    calls = [{"tool": "add", "args": {"a": n, "b": 100}} for n in range(3)]
    cluster.apply(echo_tools_run("at-limit", tools.url, calls, limits={"maxToolCalls": 3}), namespace)
    at_limit = cluster.wait_phase("at-limit", namespace)["status"]
    assert at_limit["phase"] == "Succeeded", at_limit
    assert [kind for kind, _ in tool_events(at_limit)].count("tool_result") == 3

    before = len(tools.calls())
    cluster.apply(echo_tools_run("below-limit", tools.url, calls, limits={"maxToolCalls": 2}), namespace)
    below = cluster.wait_phase("below-limit", namespace)["status"]
    assert (below["phase"], below["reason"]) == ("Failed", "BudgetExceeded"), below
    assert below["message"] == "budget exceeded: maxToolCalls is 2, the run needed 3"
    # Two calls ran; the third was refused before it reached the server.
    assert tools.calls()[before:] == [call["args"] for call in calls[:2]]
    assert [kind for kind, _ in tool_events(below)] == ["tool_call", "tool_result"] * 2 + ["tool_call"]


# --- headersSecretRef ------------------------------------------------------------------------


def test_headers_from_a_secret_reach_the_server_and_nothing_else(
    cluster: harness.Cluster,
    namespace: str,
    start_operator: Any,
    tools: mcp_server.MCPTestServer,
) -> None:
    token = f"mcp-token-{secrets.token_hex(8)}"
    tenant = f"tenant-{secrets.token_hex(6)}"
    headers = json.dumps({"Authorization": f"Bearer {token}", "X-Tenant": tenant})
    cluster.kubectl(
        "create", "secret", "generic", "mcp-headers", "-n", namespace, f"--from-literal=headers.json={headers}"
    )
    operator = start_operator(namespace, log_level="DEBUG")
    # The server repeats both headers back, as a careless one might: the run must mask them.
    calls = [
        {"tool": "echo_header", "args": {"name": "Authorization"}},
        {"tool": "echo_header", "args": {"name": "X-Tenant"}},
    ]
    config = {"headersSecretRef": {"name": "mcp-headers", "key": "headers.json"}}
    cluster.apply(echo_tools_run("with-headers", tools.url, calls, tools_config=config), namespace)
    status = cluster.wait_phase("with-headers", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert f"Bearer {token}" in tools.header_values("Authorization")
    assert tenant in tools.header_values("X-Tenant")
    results = [data["result"] for kind, data in tool_events(status) if kind == "tool_result"]
    assert results == ["[redacted]", "[redacted]"]
    assert status["output"] == "echo: What about incident 42? | echo_header: [redacted] | echo_header: [redacted]"
    shown = [
        json.dumps(cluster.get("agentrun", "with-headers", namespace)),
        json.dumps(cluster.events_for("with-headers", namespace)),
        operator.logs(),
    ]
    assert "layer types registered" in operator.logs()  # DEBUG is on
    for secret in (token, tenant, base64.b64encode(headers.encode()).decode()):
        for text in shown:
            assert secret not in text


def test_a_headers_secret_that_is_not_a_json_object_fails_without_showing_it(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "mcp-headers", "-n", namespace, "--from-literal=headers.json=Bearer abcdef123"
    )
    config = {"headersSecretRef": {"name": "mcp-headers", "key": "headers.json"}}
    cluster.apply(echo_tools_run("bad-headers", tools.url, [], tools_config=config), namespace)
    status = cluster.wait_phase("bad-headers", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRequest")
    assert status["message"] == (
        "headersSecretRef of layer 'tools': key 'headers.json' of Secret 'mcp-headers' "
        "must hold a JSON object of header names to string values"
    )
    assert "abcdef123" not in json.dumps(status)


# --- the MCP session ends with the run --------------------------------------------------------


def _established_to(port: int) -> int:
    """This machine's established TCP connections whose remote end is ``port`` on loopback."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = pathlib.Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def _eventually(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _spec(url: str, calls: list[dict[str, Any]]) -> models.AgentRunSpec:
    manifest = echo_tools_run("direct", url, calls)
    return models.AgentRunSpec.model_validate(manifest["spec"])


async def _no_secrets(name: str, key: str) -> str:
    raise AssertionError("no Secret is read")


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("success", id="after-success"),
        pytest.param("budget", id="after-a-budget-stop"),
        pytest.param("cancelled", id="after-cancellation-mid-call"),
    ],
)
async def test_the_mcp_session_is_closed_however_the_run_ends(tools: mcp_server.MCPTestServer, ending: str) -> None:
    port = int(tools.url.rsplit(":", 1)[1].split("/")[0])
    baseline_tasks = set(asyncio.all_tasks())
    calls = [{"tool": "add", "args": {"a": 1, "b": 2}}, {"tool": "slow", "args": {"seconds": 60}}]
    spec = _spec(tools.url, calls if ending != "success" else calls[:1])
    if ending == "budget":
        spec = spec.model_copy(update={"limits": models.Limits(max_tool_calls=1)})
    context = base.RunContext(namespace="ns", read_secret=_no_secrets)
    slow_calls = len(tools.calls("slow"))
    run = asyncio.create_task(
        compositor.run(spec, registry.LayerRegistry.from_entry_points(), context, lambda kind, data: None)
    )
    if ending == "cancelled":
        await _eventually(lambda: len(tools.calls("slow")) > slow_calls, "the slow call to reach the server")
        assert _established_to(port) >= 1  # the session is open while the call waits
        run.cancel()
    match ending:
        case "success":
            assert (await run).output == "echo: What about incident 42? | add: 3"
        case "budget":
            with pytest.raises(errors.BudgetExceeded):
                await run
        case "cancelled":
            with pytest.raises(asyncio.CancelledError):
                await run
    await _eventually(lambda: _established_to(port) == 0, "the client's connections to the MCP server to close")
    await _eventually(lambda: set(asyncio.all_tasks()) <= baseline_tasks | {asyncio.current_task()}, "no tasks left")


def test_the_example_runs_against_the_demo_tools(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    manifest = harness.example("mcp-tools.yaml")
    [layer] = [layer for layer in manifest["spec"]["composition"]["layers"] if layer["type"] == "tools.mcp"]
    assert layer["config"]["url"] == "http://127.0.0.1:8000/mcp"
    layer["config"]["url"] = tools.url  # the demo serves on 8000; the tests on a free port
    cluster.apply(manifest, namespace)
    status = cluster.wait_phase("incident-tools", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output"] == f"echo: What is the state of incident 42? | lookup_incident: {INCIDENT_42} | add: 5"
    assert [kind for kind, _ in tool_events(status)] == ["tool_call", "tool_result"] * 2
