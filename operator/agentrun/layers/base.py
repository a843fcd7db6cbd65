"""What a layer type is, and what layers build together.

A composition is entered layer by layer, in order. Each layer validates its own
``config`` when it is created, then contributes to one :class:`AgentPlan` when it is
entered (a prompt, a model, an output schema, resumed history). When the run ends
each layer returns the runtime state that the session snapshot keeps for it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pydantic
from pydantic_ai import messages as ai_messages
from pydantic_ai import models as ai_models
from pydantic_ai import settings as ai_settings
from pydantic_ai import toolsets as ai_toolsets

from agentrun.layers import errors

State = dict[str, Any]
SecretReader = Callable[[str, str], Awaitable[str]]
"""Reads key ``(name, key)`` of a Secret in the run's namespace; raises CredentialsUnavailable."""
SecretMasker = Callable[[str], None]
"""Masks a value from now on in everything the run hands back."""


def _mask_nothing(value: str) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a layer may reach outside itself while it is entered."""

    namespace: str
    read_secret: SecretReader
    mask_secret: SecretMasker = _mask_nothing
    """For values a layer takes out of what ``read_secret`` returned (the values of a JSON
    document of headers, say): each is masked like the whole Secret value is."""


@dataclasses.dataclass
class OutputSpec:
    """Structured output requested by an output layer."""

    json_schema: dict[str, Any]
    name: str
    description: str | None
    strict: bool | None


@dataclasses.dataclass
class AgentPlan:
    """Everything the layers contribute to one agent run."""

    system_prompts: list[str] = dataclasses.field(default_factory=list)
    user_prompts: list[str] = dataclasses.field(default_factory=list)
    model: ai_models.Model | None = None
    model_settings: ai_settings.ModelSettings = dataclasses.field(default_factory=ai_settings.ModelSettings)
    output: OutputSpec | None = None
    history: list[ai_messages.ModelMessage] = dataclasses.field(default_factory=list)
    toolsets: list[ai_toolsets.AbstractToolset[None]] = dataclasses.field(default_factory=list)
    """Tools the model may call; the agent enters each when the run starts and leaves it when the run ends."""


@dataclasses.dataclass(frozen=True)
class AgentOutcome:
    """What the agent produced, as the layers see it on exit."""

    output: Any
    messages: list[ai_messages.ModelMessage]


class LayerConfig(pydantic.BaseModel):
    """Base of every layer's config model: camelCase keys, unknown keys rejected."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel, populate_by_name=True, extra="forbid"
    )


class Layer(abc.ABC):
    """A typed building block of a composition.

    Subclasses set ``type_id`` and ``config_model``; third parties publish them under
    the ``agentrun.layers`` entry-point group.
    """

    type_id: ClassVar[str]
    config_model: ClassVar[type[LayerConfig]]

    def __init__(self, name: str, raw_config: dict[str, Any]) -> None:
        self.name = name
        try:
            self.config = self.config_model.model_validate(raw_config)
        except pydantic.ValidationError as error:
            raise errors.InvalidRequest(
                f"Layer '{name}' ({self.type_id}) has invalid config: {_describe(error)}"
            ) from None

    @abc.abstractmethod
    async def enter(self, plan: AgentPlan, context: RunContext, state: State | None) -> None:
        """Contribute to ``plan``; ``state`` is what the previous run left, if it suspended."""

    def leave(self, outcome: AgentOutcome) -> State:
        """The runtime state to keep in the session snapshot. Stateless layers keep none."""
        return {}


def _describe(error: pydantic.ValidationError) -> str:
    # Say where and what, never the input value: it may be a credential pasted by mistake.
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'config'}: {item['msg']}"
        for item in error.errors(include_input=False, include_url=False)
    )
