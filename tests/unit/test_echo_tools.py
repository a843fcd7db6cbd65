"""model.echo calling tools from a script, and the tool events a run reports."""

from __future__ import annotations

import json
from typing import Any

import local_tools
import pytest

from agentrun.api import models
from agentrun.layers import base, compositor, errors, events, registry

Progress = list[tuple[str, dict[str, Any]]]

ADD = {"tool": "add", "args": {"a": 2, "b": 3}}
SECRET = "tool-secret-0123456789abcdef"


async def run(
    run_spec: models.AgentRunSpec, context: base.RunContext, layer_registry: registry.LayerRegistry | None = None
) -> tuple[compositor.CompositionResult, Progress]:
    progress: Progress = []
    result = await compositor.run(
        run_spec,
        layer_registry or local_tools.layer_registry(),
        context,
        lambda kind, data: progress.append((kind, data)),
    )
    return result, progress


async def test_echo_calls_the_scripted_tools_in_order_then_answers_with_their_results(
    run_context: base.RunContext,
) -> None:
    calls = [ADD, {"tool": "add", "args": {"a": 40, "b": 2}}]
    result, progress = await run(local_tools.spec(calls), run_context)
    assert result.output == "echo: what happened | add: 5 | add: 42"
    assert progress == [
        ("model_request", {"request": 1}),
        ("tool_call", {"tool": "add", "callId": "echo-call-1", "args": '{"a":2,"b":3}'}),
        ("tool_result", {"tool": "add", "callId": "echo-call-1", "outcome": "success", "result": "5"}),
        ("model_request", {"request": 2}),
        ("tool_call", {"tool": "add", "callId": "echo-call-2", "args": '{"a":40,"b":2}'}),
        ("tool_result", {"tool": "add", "callId": "echo-call-2", "outcome": "success", "result": "42"}),
        ("model_request", {"request": 3}),
    ]


async def test_a_tool_error_goes_back_to_the_model_and_the_run_succeeds(run_context: base.RunContext) -> None:
    result, progress = await run(local_tools.spec([{"tool": "fail"}, ADD]), run_context)
    failed = {"tool": "fail", "callId": "echo-call-1", "outcome": "failed", "result": "this tool always fails"}
    assert ("tool_result", failed) in progress
    assert result.output == 'echo: what happened | fail: {"error":"this tool always fails"} | add: 5'


async def test_a_tool_the_composition_does_not_offer_is_refused_to_the_model(run_context: base.RunContext) -> None:
    result, progress = await run(local_tools.spec([{"tool": "delete_everything"}]), run_context)
    [(_, refused)] = [item for item in progress if item[0] == "tool_result"]
    assert refused["outcome"] == "retried"
    assert "Unknown tool name: 'delete_everything'" in refused["result"]
    assert result.output.startswith("echo: what happened | delete_everything: ")


async def test_same_script_same_usage(run_context: base.RunContext) -> None:
    first, _ = await run(local_tools.spec([ADD, {"tool": "fail"}]), run_context)
    second, _ = await run(local_tools.spec([ADD, {"tool": "fail"}]), run_context)
    assert first.usage == second.usage
    assert first.output == second.output


async def test_the_script_runs_again_in_every_turn(run_context: base.RunContext) -> None:
    first, _ = await run(local_tools.spec([ADD], user="first"), run_context)
    second, progress = await run(
        local_tools.spec([ADD], user="second", sessionSnapshot=first.session_snapshot.to_wire()), run_context
    )
    assert second.output == "echo (turn 2): second | earlier you said: first | add: 5"
    # Call ids stay unique across the conversation.
    assert [data["callId"] for kind, data in progress if kind == "tool_call"] == ["echo-call-2"]


async def test_without_a_script_echo_behaves_as_before(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    spec = models.AgentRunSpec.model_validate(
        {
            "composition": {
                "layers": [
                    {"name": "llm", "type": "model.echo"},
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "one two three"}},
                ]
            }
        }
    )
    result, progress = await run(spec, run_context, layer_registry)
    assert result.output == "echo: one two three"
    assert result.usage == models.Usage(requests=1, input_tokens=3, output_tokens=4)
    assert progress == [("model_request", {"request": 1})]


async def test_scripted_calls_then_structured_output(run_context: base.RunContext) -> None:
    spec = local_tools.spec([ADD])
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    spec.composition.layers.append(
        models.Layer.model_validate({"name": "output", "type": "agentrun.output", "config": {"jsonSchema": schema}})
    )
    result, progress = await run(spec, run_context)
    assert result.output == {"summary": "what happened | add: 5"}
    # The output tool is the answer, not a tool call of the run.
    assert [data["tool"] for kind, data in progress if kind in ("tool_call", "tool_result")] == ["add", "add"]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"toolCalls": [{"args": {}}]}, id="call-without-a-tool"),
        pytest.param({"toolCalls": [{"tool": ""}]}, id="empty-tool-name"),
        pytest.param({"toolCalls": [{"tool": "add", "args": [1, 2]}]}, id="args-not-an-object"),
        pytest.param({"toolCalls": [{"tool": "add", "arguments": {}}]}, id="unknown-key"),
        pytest.param({"toolCalls": [ADD] * 101}, id="too-many-calls"),
    ],
)
async def test_invalid_scripts_are_invalid_requests(config: dict[str, Any], run_context: base.RunContext) -> None:
    layers = [
        {"name": "llm", "type": "model.echo", "config": config},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
    ]
    spec = models.AgentRunSpec.model_validate({"composition": {"layers": layers}})
    with pytest.raises(errors.InvalidRequest, match=r"Layer 'llm' \(model.echo\) has invalid config: toolCalls"):
        await run(spec, run_context)


async def _read_secret(name: str, key: str) -> str:
    assert (name, key) == ("tool-secret", "value")
    return SECRET


@pytest.mark.parametrize(
    "padding",
    [
        pytest.param(0, id="whole"),
        # The cut keeps the first 14 characters of the secret if it comes before the masking.
        pytest.param(events.MAX_PAYLOAD_BYTES - len(events.ELLIPSIS.encode()) - 14, id="straddling-the-cut"),
        pytest.param(events.MAX_PAYLOAD_BYTES - 1, id="only-its-first-character-fits"),
    ],
)
async def test_tool_results_are_masked_before_they_are_cut(padding: int) -> None:
    context = base.RunContext(namespace="ns", read_secret=_read_secret)
    spec = local_tools.spec(
        [{"tool": "reveal", "args": {"padding": padding}}], tools={"secretRef": {"name": "tool-secret", "key": "value"}}
    )
    result, progress = await run(spec, context)
    [(_, shown)] = [item for item in progress if item[0] == "tool_result"]
    assert len(shown["result"].encode()) <= events.MAX_PAYLOAD_BYTES
    assert SECRET[:8] not in shown["result"]
    assert SECRET[:8] not in json.dumps(result.output)
    if padding == 0:
        assert shown["result"] == "[redacted]"


async def test_two_tool_layers_offering_the_same_tool_are_an_invalid_request(run_context: base.RunContext) -> None:
    spec = local_tools.spec([ADD])
    spec.composition.layers.append(models.Layer.model_validate({"name": "more-tools", "type": "test.tools"}))
    with pytest.raises(errors.InvalidRequest) as failed:
        await run(spec, run_context)
    assert failed.value.message.startswith("two tool layers offer the same tool: ")
    assert "'add'" in failed.value.message
