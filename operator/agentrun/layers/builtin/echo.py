"""``model.echo``: an offline, deterministic model shipped with the operator.

It answers from the prompt, produces a schema-valid object when the composition has
an output layer, and can wait ``delaySeconds`` before answering. Given ``toolCalls``,
it first calls those tools, one per model request and in order, and its answer then
repeats what they returned. The demo and the tests run on it with no network and no key.

Its usage is deterministic, one token per whitespace-separated word: a request's input
is every user message and tool result in the conversation so far; its output is the
answer, or for a tool call the tool's name plus its arguments as compact JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pydantic
from pydantic_ai import messages as ai_messages
from pydantic_ai import usage as ai_usage
from pydantic_ai.models import function

from agentrun.layers import base, errors
from agentrun.layers.builtin import model

MAX_SCRIPTED_TOOL_CALLS = 100
"""Most tool calls one ``toolCalls`` script may list."""
OUTPUT_TOOL_PREFIX = "final_result"


class ScriptedToolCall(base.LayerConfig):
    tool: str = pydantic.Field(min_length=1, max_length=128, description="Name of the tool to call.")
    args: dict[str, Any] = pydantic.Field(
        default_factory=dict,
        description="Arguments of the call, a JSON object.",
    )


class EchoConfig(base.LayerConfig):
    delay_seconds: float = pydantic.Field(0.0, ge=0, le=3600, description="Wait this long before each answer.")
    tool_calls: list[ScriptedToolCall] = pydantic.Field(
        default_factory=list,
        max_length=MAX_SCRIPTED_TOOL_CALLS,
        description=(
            "Tools to call before answering, one per model request and in order, in every turn; "
            "the answer then lists what each returned."
        ),
    )


def _user_texts(messages: list[ai_messages.ModelMessage]) -> list[str]:
    texts: list[str] = []
    for message in messages:
        if isinstance(message, ai_messages.ModelRequest):
            for part in message.parts:
                if isinstance(part, ai_messages.UserPromptPart):
                    content = part.content
                    texts.extend([content] if isinstance(content, str) else [c for c in content if isinstance(c, str)])
    return texts


MAX_ECHO_ITEMS = 1_000
"""Most items model.echo puts in one array; a schema whose minItems is larger fails the run."""
MAX_ECHO_STRING_LENGTH = 10_000
"""Longest string model.echo writes; a schema whose minLength is larger fails the run."""
MAX_ECHO_ANSWER_SIZE = 1_000_000
"""Most characters in one structured answer (its strings, plus one for every other value)."""


def example_for(schema: Any, text: str) -> Any:
    """A deterministic value valid against ``schema`` (inlined, as the output layer prepares it).

    Raises ``InvalidRequest`` when the value would exceed model.echo's limits.
    """
    return _Example(text).value(schema)


class _Example:
    def __init__(self, text: str) -> None:
        self.text = text[:MAX_ECHO_STRING_LENGTH]
        self.size = 0

    def _spend(self, size: int) -> None:
        self.size += size
        if self.size > MAX_ECHO_ANSWER_SIZE:
            raise errors.InvalidRequest(
                f"model.echo cannot answer: the answer would exceed its limit of {MAX_ECHO_ANSWER_SIZE} characters"
            )

    def value(self, schema: Any) -> Any:
        self._spend(1)
        if not isinstance(schema, dict):
            return self.text if schema else None  # `true` accepts anything, `false` nothing
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for keyword in ("anyOf", "oneOf", "allOf"):
            if schema.get(keyword):
                return self.value(schema[keyword][0])
        kind = schema.get("type", "object")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        match kind:
            case "object":
                properties = schema.get("properties", {})
                return {name: self.value(sub) for name, sub in properties.items()}
            case "array":
                return [self.value(schema.get("items", {"type": "string"})) for _ in range(self._count(schema))]
            case "string":
                return self._string(schema)
            case "integer":
                return math.ceil(_lowest(schema))
            case "number":
                return float(_lowest(schema))
            case "boolean":
                return True
            case _:
                return None

    def _count(self, schema: dict[str, Any]) -> int:
        least = int(schema.get("minItems", 0))
        if least > MAX_ECHO_ITEMS:
            raise errors.InvalidRequest(
                f"model.echo cannot answer: minItems {least} is above its limit of {MAX_ECHO_ITEMS} items per array"
            )
        return min(max(1, least), int(schema.get("maxItems", MAX_ECHO_ITEMS)))

    def _string(self, schema: dict[str, Any]) -> str:
        least = int(schema.get("minLength", 0))
        if least > MAX_ECHO_STRING_LENGTH:
            raise errors.InvalidRequest(
                f"model.echo cannot answer: minLength {least} is above its limit of "
                f"{MAX_ECHO_STRING_LENGTH} characters per string"
            )
        value = self.text.ljust(least, ".")[: int(schema.get("maxLength", MAX_ECHO_STRING_LENGTH))]
        self._spend(len(value))
        return value


def _lowest(schema: dict[str, Any]) -> float:
    """The least number the schema allows (ints stay ints: a large one must not overflow a float)."""
    bound: float = schema.get("minimum", 0)
    if "minimum" not in schema and "exclusiveMinimum" in schema:
        bound = schema["exclusiveMinimum"] + 1
    return bound


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def _is_output_tool(name: str) -> bool:
    return name.startswith(OUTPUT_TOOL_PREFIX)


def _tool_results(messages: list[ai_messages.ModelMessage]) -> list[ai_messages.ToolReturnPart]:
    return [
        part
        for message in messages
        if isinstance(message, ai_messages.ModelRequest)
        for part in message.parts
        if isinstance(part, ai_messages.ToolReturnPart) and not _is_output_tool(part.tool_name)
    ]


def _tool_calls(messages: list[ai_messages.ModelMessage]) -> list[ai_messages.ToolCallPart]:
    return [
        part
        for message in messages
        if isinstance(message, ai_messages.ModelResponse)
        for part in message.parts
        if isinstance(part, ai_messages.ToolCallPart) and not _is_output_tool(part.tool_name)
    ]


def _this_turn(messages: list[ai_messages.ModelMessage]) -> list[ai_messages.ModelMessage]:
    """The messages since the latest user message, that message included."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, ai_messages.ModelRequest) and any(
            isinstance(part, ai_messages.UserPromptPart) for part in message.parts
        ):
            return messages[index:]
    return messages


def _compact(args: dict[str, Any]) -> str:
    return json.dumps(args, separators=(",", ":"), ensure_ascii=False)


class EchoLayer(model.ModelLayer):
    """Answers ``echo: <last user message>``; on later turns it also repeats what it heard before."""

    type_id = "model.echo"
    config_model = EchoConfig
    config: EchoConfig

    async def provide(self, plan: base.AgentPlan, context: base.RunContext) -> None:
        plan.model = function.FunctionModel(self._answer, model_name="echo")

    async def _answer(
        self, messages: list[ai_messages.ModelMessage], info: function.AgentInfo
    ) -> ai_messages.ModelResponse:
        if self.config.delay_seconds:
            await asyncio.sleep(self.config.delay_seconds)
        texts = _user_texts(messages)
        results = _tool_results(messages)
        heard = _words(texts) + _words([part.model_response_str() for part in results])
        turn = _this_turn(messages)
        called = len(_tool_calls(turn))
        if called < len(self.config.tool_calls):
            script = self.config.tool_calls[called]
            arguments = _compact(script.args)
            call = ai_messages.ToolCallPart(
                script.tool, arguments, tool_call_id=f"echo-call-{len(_tool_calls(messages)) + 1}"
            )
            usage = ai_usage.RequestUsage(input_tokens=heard, output_tokens=1 + len(arguments.split()))
            return ai_messages.ModelResponse(parts=[call], usage=usage)
        last = texts[-1] if texts else ""
        if len(texts) <= 1:
            reply = f"echo: {last}"
        else:
            reply = f"echo (turn {len(texts)}): {last} | earlier you said: {' / '.join(texts[:-1])}"
        answered = [f"{part.tool_name}: {part.model_response_str()}" for part in _tool_results(turn)]
        if answered:
            reply = " | ".join([reply, *answered])
            last = " | ".join([last, *answered])
        usage = ai_usage.RequestUsage(input_tokens=heard, output_tokens=len(reply.split()))
        if info.output_tools:
            tool = info.output_tools[0]
            value = example_for(tool.parameters_json_schema, last)
            return ai_messages.ModelResponse(parts=[ai_messages.ToolCallPart(tool.name, value)], usage=usage)
        return ai_messages.ModelResponse(parts=[ai_messages.TextPart(reply)], usage=usage)
