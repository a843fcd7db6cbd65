"""What every model layer shares: the conversation history it keeps in the session."""

from __future__ import annotations

from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import messages as ai_messages

from agentrun.layers import base, errors

HISTORY_KEY = "messages"


def load_history(state: base.State | None) -> list[ai_messages.ModelMessage]:
    if not state or HISTORY_KEY not in state:
        return []
    try:
        return ai_messages.ModelMessagesTypeAdapter.validate_python(state[HISTORY_KEY])
    except pydantic.ValidationError:
        raise errors.InvalidRequest(
            "Session snapshot of the model layer holds a conversation history that cannot be read."
        ) from None


def dump_history(messages: list[ai_messages.ModelMessage]) -> list[Any]:
    return list(
        pydantic_core.to_jsonable_python(ai_messages.ModelMessagesTypeAdapter.dump_python(messages, mode="json"))
    )


def with_user_turn(state: base.State, prompts: list[str]) -> base.State:
    """The model layer's state with ``prompts`` added as one user request that got no answer."""
    history = load_history(state)
    parts: list[ai_messages.ModelRequestPart] = [ai_messages.UserPromptPart(prompt) for prompt in prompts]
    history.append(ai_messages.ModelRequest(parts=parts))
    return {**state, HISTORY_KEY: dump_history(history)}


class ModelLayer(base.Layer):
    """A layer that provides the model and carries the conversation between runs."""

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        if plan.model is not None:
            raise errors.InvalidRequest(f"Layer '{self.name}' is a second model layer: a composition has one model.")
        plan.history = load_history(state)
        await self.provide(plan, context)

    async def provide(self, plan: base.AgentPlan, context: base.RunContext) -> None:
        """Set ``plan.model`` and ``plan.model_settings``."""
        raise NotImplementedError

    def leave(self, outcome: base.AgentOutcome) -> base.State:
        return {HISTORY_KEY: dump_history(outcome.messages)}
