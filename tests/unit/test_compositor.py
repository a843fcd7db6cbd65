"""The compositor with the real layer registry and the offline echo model."""

from __future__ import annotations

from typing import Any

import fakes
import jsonschema
import pytest

from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry
from agentrun.layers.builtin import echo, output

Progress = list[tuple[str, dict[str, Any]]]


def spec(
    user: str | list[str] = "hi",
    *,
    json_schema: dict[str, Any] | None = None,
    prefix: str | None = None,
    **fields: Any,
) -> models.AgentRunSpec:
    wire = fakes.echo_spec(user, **fields)
    if prefix is not None:
        wire["composition"]["layers"][1]["config"]["prefix"] = prefix
    if json_schema is not None:
        wire["composition"]["layers"].append(
            {"name": "output", "type": "agentrun.output", "config": {"jsonSchema": json_schema}}
        )
    return models.AgentRunSpec.model_validate(wire)


async def run(
    run_spec: models.AgentRunSpec, layer_registry: registry.LayerRegistry, context: base.RunContext
) -> tuple[compositor.CompositionResult, Progress]:
    progress: Progress = []
    result = await compositor.run(run_spec, layer_registry, context, lambda kind, data: progress.append((kind, data)))
    return result, progress


async def test_text_output_echoes_the_prompt(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    result, progress = await run(spec("Say hello.", prefix="Be nice."), layer_registry, run_context)
    assert result.output == "echo: Say hello."
    assert result.usage.requests >= 1
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert progress == [("model_request", {"request": 1})]
    assert [(layer.name, layer.lifecycle_state) for layer in result.session_snapshot.layers] == [
        ("llm", models.LifecycleState.SUSPENDED),
        ("prompt", models.LifecycleState.SUSPENDED),
    ]


STRUCTURED = [
    pytest.param(
        {
            "type": "object",
            "properties": {"bullets": {"type": "array", "items": {"type": "string"}}},
            "required": ["bullets"],
        },
        id="design-example",
    ),
    pytest.param(
        {
            "type": "object",
            "title": "Incident",
            "properties": {
                "severity": {"enum": ["low", "medium", "high"]},
                "count": {"type": "integer", "minimum": 3},
                "owner": {"$ref": "#/$defs/Person"},
                "notes": {"type": "array", "minItems": 2, "items": {"type": "string", "minLength": 12}},
            },
            "required": ["severity", "count", "owner", "notes"],
            "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
        },
        id="defs-enum-limits",
    ),
]


@pytest.mark.parametrize("json_schema", STRUCTURED)
async def test_structured_output_is_valid_against_the_schema(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext, json_schema: dict[str, Any]
) -> None:
    result, _ = await run(spec("Summarize incident 42.", json_schema=json_schema), layer_registry, run_context)
    assert isinstance(result.output, dict)
    jsonschema.Draft202012Validator(json_schema).validate(result.output)
    assert [layer.name for layer in result.session_snapshot.layers] == ["llm", "prompt", "output"]


@pytest.mark.parametrize(
    "user",
    [
        pytest.param(["", " "], id="blank-list"),
        pytest.param("   ", id="blank-string"),
        pytest.param([], id="no-prompts"),
        pytest.param(["\n", "\t"], id="whitespace"),
    ],
)
async def test_blank_prompts_fail_with_the_exact_message(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext, user: str | list[str]
) -> None:
    with pytest.raises(errors.InvalidRequest) as rejected:
        await run(spec(user), layer_registry, run_context)
    assert rejected.value.message == "run.user_prompts must not be empty"


async def test_blank_prompts_among_real_ones_are_dropped(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    result, _ = await run(spec(["", "first", " ", "second"]), layer_registry, run_context)
    assert result.output.startswith("echo (turn 2): second")
    assert "first" in result.output


async def test_second_turn_continues_the_conversation(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    first, _ = await run(spec("My favourite colour is teal."), layer_registry, run_context)
    follow_up = spec("What is my favourite colour?", sessionSnapshot=first.session_snapshot.to_wire())

    second, _ = await run(follow_up, layer_registry, run_context)

    assert second.output.startswith("echo (turn 2): What is my favourite colour?")
    assert "My favourite colour is teal." in second.output
    history = second.session_snapshot.layers[0].runtime_state["messages"]
    prompts = [
        part["content"]
        for message in history
        if message["kind"] == "request"
        for part in message["parts"]
        if part["part_kind"] == "user-prompt"
    ]
    assert prompts == ["My favourite colour is teal.", "What is my favourite colour?"]
    assert len(history) == 4  # two requests, two responses


async def test_session_exit_close_leaves_a_closed_snapshot_that_cannot_be_entered(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    result, _ = await run(spec("bye", sessionExit="close"), layer_registry, run_context)
    assert {layer.lifecycle_state for layer in result.session_snapshot.layers} == {models.LifecycleState.CLOSED}
    with pytest.raises(errors.InvalidRequest, match=r"is closed; CLOSED snapshots cannot be entered\."):
        await run(spec("again", sessionSnapshot=result.session_snapshot.to_wire()), layer_registry, run_context)


async def test_unknown_layer_type_fails_the_run(run_context: base.RunContext) -> None:
    without_prompt = registry.LayerRegistry([echo.EchoLayer, output.OutputLayer])
    with pytest.raises(errors.InvalidRequest) as rejected:
        await run(spec("hi"), without_prompt, run_context)
    assert rejected.value.message == "Layer type id 'plain.prompt' is not registered."


async def test_recursive_output_schema_fails_the_run(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    recursive = {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "$defs": {"N": {"$ref": "#/$defs/N"}}}
    with pytest.raises(errors.InvalidRequest) as rejected:
        await run(spec("hi", json_schema=recursive), layer_registry, run_context)
    assert rejected.value.message == "Recursive $defs refs are not supported for structured output exposure."


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param(
            [{"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}}],
            "The composition has no model layer",
            id="no-model",
        ),
        pytest.param(
            [
                {"name": "llm", "type": "model.echo"},
                {"name": "other", "type": "model.echo"},
                {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
            ],
            "Layer 'other' is a second model layer",
            id="two-models",
        ),
    ],
)
async def test_composition_needs_exactly_one_model(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext, layers: list[dict[str, Any]], expected: str
) -> None:
    run_spec = models.AgentRunSpec.model_validate({"composition": {"layers": layers}})
    with pytest.raises(errors.InvalidRequest, match=expected):
        await run(run_spec, layer_registry, run_context)


async def test_unreadable_history_in_the_snapshot_is_an_invalid_request(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    broken = {
        "layers": [
            {"name": "llm", "lifecycleState": "suspended", "runtimeState": {"messages": [{"kind": "nonsense"}]}},
            {"name": "prompt", "lifecycleState": "suspended"},
        ]
    }
    with pytest.raises(errors.InvalidRequest, match="conversation history that cannot be read"):
        await run(spec("hi", sessionSnapshot=broken), layer_registry, run_context)
