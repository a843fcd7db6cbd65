"""``model.echo``: an offline, deterministic model shipped with the operator.

It answers from the prompt, produces a schema-valid object when the composition has
an output layer, and can wait ``delaySeconds`` before answering. The demo and the
tests run on it with no network and no key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
from pydantic_ai import messages as ai_messages
from pydantic_ai import usage as ai_usage
from pydantic_ai.models import function

from agentrun.layers import base
from agentrun.layers.builtin import model


class EchoConfig(base.LayerConfig):
    delay_seconds: float = pydantic.Field(0.0, ge=0, le=3600, description="Wait this long before each answer.")


def _user_texts(messages: list[ai_messages.ModelMessage]) -> list[str]:
    texts: list[str] = []
    for message in messages:
        if isinstance(message, ai_messages.ModelRequest):
            for part in message.parts:
                if isinstance(part, ai_messages.UserPromptPart):
                    content = part.content
                    texts.extend([content] if isinstance(content, str) else [c for c in content if isinstance(c, str)])
    return texts


def example_for(schema: dict[str, Any], text: str) -> Any:
    """A deterministic value valid against ``schema`` (inlined, as the output layer prepares it)."""
    for keyword in ("const",):
        if keyword in schema:
            return schema[keyword]
    if schema.get("enum"):
        return schema["enum"][0]
    for keyword in ("anyOf", "oneOf", "allOf"):
        if schema.get(keyword):
            return example_for(schema[keyword][0], text)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    match kind:
        case "object":
            properties = schema.get("properties", {})
            return {name: example_for(sub, text) for name, sub in properties.items()}
        case "array":
            count = max(1, int(schema.get("minItems", 1)))
            return [example_for(schema.get("items", {"type": "string"}), text) for _ in range(count)]
        case "string":
            limit = schema.get("maxLength")
            value = text if len(text) >= int(schema.get("minLength", 0)) else text.ljust(int(schema["minLength"]), ".")
            return value[: int(limit)] if limit is not None else value
        case "integer":
            return int(schema.get("minimum", 0))
        case "number":
            return float(schema.get("minimum", 0))
        case "boolean":
            return True
        case _:
            return None


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


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
        last = texts[-1] if texts else ""
        if len(texts) <= 1:
            reply = f"echo: {last}"
        else:
            reply = f"echo (turn {len(texts)}): {last} | earlier you said: {' / '.join(texts[:-1])}"
        usage = ai_usage.RequestUsage(input_tokens=_words(texts), output_tokens=len(reply.split()))
        if info.output_tools:
            tool = info.output_tools[0]
            value = example_for(tool.parameters_json_schema, last)
            return ai_messages.ModelResponse(parts=[ai_messages.ToolCallPart(tool.name, value)], usage=usage)
        return ai_messages.ModelResponse(parts=[ai_messages.TextPart(reply)], usage=usage)
