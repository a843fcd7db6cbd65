"""The compositor with the real layer registry and the offline echo model.

Untrusted schemas and a provider that echoes the key are driven through the public
entry point, ``compositor.run``, as the runtime calls it.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import traceback
from typing import Any, ClassVar

import fakes
import jsonschema
import pydantic_ai
import pytest
from pydantic_ai import messages as ai_messages
from pydantic_ai.models import function

from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry
from agentrun.layers.builtin import echo, model, output, prompt

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


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


ECHO_LIMITS = [
    pytest.param(
        _object(items={"type": "array", "minItems": 5_000_000, "items": {"type": "integer"}}),
        "minItems 5000000 is above its limit of 1000 items per array",
        id="million-minItems",
    ),
    pytest.param(
        _object(text={"type": "string", "minLength": 5_000_000}),
        "minLength 5000000 is above its limit of 10000 characters per string",
        id="million-minLength",
    ),
    pytest.param(
        _object(
            cube={
                "type": "array",
                "minItems": 1000,
                "items": {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000}},
            }
        ),
        "the answer would exceed its limit of 1000000 characters",
        id="nested-arrays-multiply",
    ),
]


@pytest.mark.parametrize(("json_schema", "message"), ECHO_LIMITS)
async def test_echo_refuses_answers_beyond_its_limits(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext, json_schema: dict[str, Any], message: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(errors.InvalidRequest) as rejected:
        await run(spec("hi", json_schema=json_schema), layer_registry, run_context)
    assert message in rejected.value.message
    assert rejected.value.message.startswith("model.echo cannot answer")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    ("json_schema", "expected"),
    [
        pytest.param(
            _object(text={"type": "string", "maxLength": 5_000_000}), {"text": "echo me"}, id="million-maxLength"
        ),
        pytest.param(
            _object(items={"type": "array", "maxItems": 5_000_000}), {"items": ["echo me"]}, id="million-maxItems"
        ),
        pytest.param(_object(items={"type": "array", "maxItems": 0}), {"items": []}, id="no-items-allowed"),
        pytest.param(
            _object(tags={"type": "array", "minItems": 1000, "items": {"const": "t"}}),
            {"tags": ["t"] * 1000},
            id="minItems-at-the-limit",
        ),
        pytest.param(
            _object(n={"type": "integer", "exclusiveMinimum": 10}, x={"type": "number", "minimum": 2.5}),
            {"n": 11, "x": 2.5},
            id="numbers",
        ),
        pytest.param(_object(any=True), {"any": "echo me"}, id="true-schema"),
    ],
)
async def test_echo_answers_within_its_limits(
    layer_registry: registry.LayerRegistry,
    run_context: base.RunContext,
    json_schema: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    result, _ = await run(spec("echo me", json_schema=json_schema), layer_registry, run_context)
    assert result.output == expected
    jsonschema.Draft202012Validator(json_schema).validate(result.output)


def _exponential_defs(levels: int) -> dict[str, Any]:
    defs: dict[str, Any] = {
        f"L{n}": _object(left={"$ref": f"#/$defs/L{n + 1}"}, right={"$ref": f"#/$defs/L{n + 1}"}) for n in range(levels)
    }
    defs[f"L{levels}"] = {"type": "string"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/L0"}}, "$defs": defs}


HOSTILE_SCHEMAS = [
    pytest.param(_exponential_defs(20), "limit of", id="exponential-defs"),
    pytest.param(_object(x={"type": "strin"}), "not a valid JSON Schema at properties/x/type", id="invalid-type"),
    pytest.param({"type": "object", "properties": 5}, "not a valid JSON Schema at properties", id="invalid-shape"),
    pytest.param(
        {"type": "object", "properties": {"x": {"type": "object", "properties": {"a": 1}}}},
        "not a valid JSON Schema at properties/x/properties/a",
        id="invalid-nested-shape",
    ),
    pytest.param(_object(x={"type": "string", "pattern": r"(a)\1"}), "invalid escape sequence", id="backreference"),
    pytest.param(_object(x={"$dynamicRef": "https://evil.example/s#meta"}), "$dynamicRef", id="remote-dynamic-ref"),
    pytest.param(_object(x={"items": True, "type": "array", "$recursiveRef": "#"}), "$recursiveRef", id="recursive"),
]


@pytest.mark.parametrize(("json_schema", "message"), HOSTILE_SCHEMAS)
async def test_hostile_or_invalid_schemas_fail_as_invalid_requests(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext, json_schema: dict[str, Any], message: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(errors.InvalidRequest) as rejected:
        await run(spec("hi", json_schema=json_schema), layer_registry, run_context)
    assert message in rejected.value.message
    assert time.perf_counter() - started < 2


async def test_catastrophic_pattern_fails_quickly_as_output_invalid(
    layer_registry: registry.LayerRegistry, run_context: base.RunContext
) -> None:
    # The echo model answers with the prompt, which the pattern almost matches.
    json_schema = _object(answer={"type": "string", "pattern": "^(a+)+$"})
    started = time.perf_counter()
    with pytest.raises(errors.OutputInvalid) as failed:
        await run(spec("a" * 64 + "!", json_schema=json_schema), layer_registry, run_context)
    assert "does not match '^(a+)+$'" in failed.value.message
    assert time.perf_counter() - started < 2


# --- credentials ----------------------------------------------------------------------

API_KEY = 'sk-live-"quoted"-0123456789abcdef'
KEY_FORMS = [API_KEY, json.dumps(API_KEY)[1:-1], base64.b64encode(API_KEY.encode()).decode()]


class LeakyConfig(base.LayerConfig):
    leak: str


class LeakyModel(model.ModelLayer):
    """A provider that reads the run's key, then echoes it back in the way ``leak`` names."""

    type_id: ClassVar[str] = "test.leaky"
    config_model = LeakyConfig
    config: LeakyConfig

    async def provide(self, plan: base.AgentPlan, context: base.RunContext) -> None:
        key = await context.read_secret("llm-credentials", "api-key")
        plan.model = function.FunctionModel(functools.partial(self._answer, key))

    def _answer(
        self, key: str, messages: list[ai_messages.ModelMessage], info: function.AgentInfo
    ) -> ai_messages.ModelResponse:
        answered = sum(isinstance(message, ai_messages.ModelResponse) for message in messages)
        match self.config.leak:
            case "error-body":
                body = {"message": f"Incorrect API key provided: {key}", "key": key}
                raise pydantic_ai.ModelHTTPError(status_code=401, model_name="leaky", body=body)
            case "error-body-encoded":
                body = {"message": f"rejected {json.dumps(key)} (Basic {base64.b64encode(key.encode()).decode()})"}
                raise pydantic_ai.ModelHTTPError(status_code=403, model_name="leaky", body=body)
            case "connection-error":
                raise pydantic_ai.ModelAPIError(model_name="leaky", message=f"cannot connect with key {key}")
            case "tool-name" if not answered:
                return ai_messages.ModelResponse(parts=[ai_messages.ToolCallPart(key, {})])
            case "answer" | "tool-name":
                return ai_messages.ModelResponse(parts=[ai_messages.TextPart(f"your key is {key}")])
            case _:
                raise RuntimeError(f"the provider library broke while holding {key}")


async def _read_key(name: str, key: str) -> str:
    assert (name, key) == ("llm-credentials", "api-key")
    return API_KEY


def leaky_spec(leak: str) -> models.AgentRunSpec:
    layers = [
        {"name": "llm", "type": "test.leaky", "config": {"leak": leak}},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": "hi"}},
    ]
    return models.AgentRunSpec.model_validate({"composition": {"layers": layers}})


@pytest.mark.parametrize(
    ("leak", "outcome"),
    [
        pytest.param("error-body", errors.ModelError, id="provider-error-echoes-the-key"),
        pytest.param("error-body-encoded", errors.ModelError, id="provider-error-echoes-it-encoded"),
        pytest.param("connection-error", errors.ModelError, id="connection-error-names-the-key"),
        pytest.param("tool-name", None, id="tool-call-named-after-the-key"),
        pytest.param("answer", None, id="answer-repeats-the-key"),
        pytest.param("crash", Exception, id="unexpected-error-holds-the-key"),
    ],
)
async def test_the_key_never_leaves_the_run(leak: str, outcome: type[Exception] | None) -> None:
    layer_registry = registry.LayerRegistry([LeakyModel, prompt.PromptLayer])
    context = base.RunContext(namespace=fakes.NAMESPACE, read_secret=_read_key)
    shown: list[str] = []
    if outcome is None:
        result, progress = await run(leaky_spec(leak), layer_registry, context)
        shown += [json.dumps(result.output), json.dumps(progress), json.dumps(result.session_snapshot.to_wire())]
        assert "[redacted]" in json.dumps(result.output)
    else:
        with pytest.raises(outcome) as failed:
            await run(leaky_spec(leak), layer_registry, context)
        shown += [str(failed.value), "".join(traceback.format_exception(failed.value))]
        assert "[redacted]" in str(failed.value)
        if isinstance(failed.value, errors.RunFailure):
            assert failed.value.message == str(failed.value)
            shown.append(failed.value.message)
    for form in KEY_FORMS:
        assert not any(form in text for text in shown), form


async def test_failures_keep_their_class_and_detail_once_redacted() -> None:
    layer_registry = registry.LayerRegistry([LeakyModel, prompt.PromptLayer])
    context = base.RunContext(namespace=fakes.NAMESPACE, read_secret=_read_key)
    with pytest.raises(errors.ModelError) as failed:
        await run(leaky_spec("error-body"), layer_registry, context)
    assert failed.value.reason is models.Reason.MODEL_ERROR
    assert failed.value.message == "model 'leaky' returned HTTP 401: Incorrect API key provided: [redacted]"
