"""``plain.prompt``: the system prompt and the user's messages."""

from __future__ import annotations

import pydantic

from agentrun.layers import base


class PromptConfig(base.LayerConfig):
    prefix: str | None = pydantic.Field(None, description="System prompt.")
    user: list[str] = pydantic.Field(default_factory=list, description="User messages, in order.")

    @pydantic.field_validator("user", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def user_prompts(config: dict[str, object]) -> list[str]:
    """The user messages a ``plain.prompt`` layer's raw config asks (none when it is invalid)."""
    try:
        return PromptConfig.model_validate(config).user
    except pydantic.ValidationError:
        return []


class PromptLayer(base.Layer):
    """Adds a system prompt and user messages. Blank messages are dropped by the compositor."""

    type_id = "plain.prompt"
    config_model = PromptConfig
    config: PromptConfig

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        if self.config.prefix and self.config.prefix.strip():
            plan.system_prompts.append(self.config.prefix)
        plan.user_prompts.extend(self.config.user)
