"""An in-memory tool layer for unit tests: pydantic-ai function tools, no server, no network."""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic
import pydantic_ai
from pydantic_ai import toolsets

from agentrun.api import models
from agentrun.layers import base, registry
from agentrun.layers.builtin import echo, output, prompt


class LocalToolsConfig(base.LayerConfig):
    secret_ref: models.SecretKeyRef | None = pydantic.Field(None, description="Secret whose value `reveal` returns.")


class LocalToolsLayer(base.Layer):
    """Tools ``add``, ``fail`` (always a tool error) and ``reveal`` (repeats a Secret's value, padded)."""

    type_id: ClassVar[str] = "test.tools"
    config_model = LocalToolsConfig
    config: LocalToolsConfig

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        ref = self.config.secret_ref
        secret = await context.read_secret(ref.name, ref.key) if ref else ""
        tools: toolsets.FunctionToolset[None] = toolsets.FunctionToolset()

        @tools.tool_plain
        def add(a: int, b: int) -> int:
            """Add two integers."""
            return a + b

        @tools.tool_plain
        def fail() -> str:
            """Always fails."""
            raise pydantic_ai.ToolFailed("this tool always fails")

        @tools.tool_plain
        def reveal(padding: int = 0) -> str:
            """The Secret's value after ``padding`` dots."""
            return "." * padding + secret

        plan.toolsets.append(tools)


def layer_registry() -> registry.LayerRegistry:
    return registry.LayerRegistry([echo.EchoLayer, prompt.PromptLayer, output.OutputLayer, LocalToolsLayer])


def spec(
    calls: list[dict[str, Any]],
    *,
    user: str | list[str] = "what happened",
    limits: dict[str, int] | None = None,
    tools: dict[str, Any] | None = None,
    **fields: Any,
) -> models.AgentRunSpec:
    """Echo calling ``calls`` in order, with the local tools."""
    layers = [
        {"name": "llm", "type": "model.echo", "config": {"toolCalls": calls}},
        {"name": "prompt", "type": "plain.prompt", "config": {"user": user}},
        {"name": "tools", "type": "test.tools", "config": tools or {}},
    ]
    wire: dict[str, Any] = {"composition": {"layers": layers}, **fields}
    if limits is not None:
        wire["limits"] = limits
    return models.AgentRunSpec.model_validate(wire)
