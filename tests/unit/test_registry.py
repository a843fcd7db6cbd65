"""The layer-type registry: entry points, unknown types, and config validation."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from agentrun.api import models
from agentrun.layers import base, errors, registry
from agentrun.layers.builtin import echo, output, prompt

BUILT_INS = {"plain.prompt", "model.openai", "model.echo", "agentrun.output"}


def test_entry_points_register_the_built_in_layer_types(layer_registry: registry.LayerRegistry) -> None:
    types = layer_registry.type_ids
    assert set(types) >= BUILT_INS
    for type_id, layer_type in types.items():
        assert layer_type.type_id == type_id
        assert issubclass(layer_type, base.Layer)
    assert types["plain.prompt"] is prompt.PromptLayer
    assert types["model.echo"] is echo.EchoLayer
    assert types["agentrun.output"] is output.OutputLayer


def test_unregistered_type_is_an_invalid_request_with_the_exact_message() -> None:
    without_prompt = registry.LayerRegistry([echo.EchoLayer, output.OutputLayer])
    with pytest.raises(errors.InvalidRequest) as rejected:
        without_prompt.create("prompt", "plain.prompt", {"user": "hi"})
    assert rejected.value.message == "Layer type id 'plain.prompt' is not registered."
    assert rejected.value.reason is models.Reason.INVALID_REQUEST


def test_create_validates_config_into_the_layer(layer_registry: registry.LayerRegistry) -> None:
    layer = layer_registry.create("prompt", "plain.prompt", {"prefix": "Be brief.", "user": "one"})
    assert isinstance(layer, prompt.PromptLayer)
    assert layer.name == "prompt"
    assert layer.config.prefix == "Be brief."
    assert layer.config.user == ["one"]


SECRET = "sk-live-DO-NOT-LEAK-0123456789"

BAD_CONFIGS = [
    pytest.param(
        "llm", "model.openai", {"model": "gpt", "apiKeySecretRef": SECRET}, "apiKeySecretRef", id="wrong-type"
    ),
    pytest.param("llm", "model.openai", {"model": "gpt", "apiKey": SECRET}, "apiKey", id="inline-key-is-unknown"),
    pytest.param(
        "llm",
        "model.openai",
        {"model": "gpt", "settings": {"temperature": SECRET}},
        "settings.temperature",
        id="nested",
    ),
    pytest.param("llm", "model.echo", {"delaySeconds": SECRET}, "delaySeconds", id="echo-delay"),
    pytest.param("prompt", "plain.prompt", {"user": [SECRET, 7]}, "user.1", id="list-item"),
    pytest.param("output", "agentrun.output", {"jsonSchema": SECRET}, "jsonSchema", id="schema-not-object"),
]


@pytest.mark.parametrize(("name", "type_id", "config", "field"), BAD_CONFIGS)
def test_bad_config_names_the_layer_and_field_but_never_the_value(
    layer_registry: registry.LayerRegistry, name: str, type_id: str, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as rejected:
        layer_registry.create(name, type_id, config)
    message = rejected.value.message
    assert message.startswith(f"Layer '{name}' ({type_id}) has invalid config: ")
    assert field in message
    assert SECRET not in message
    assert SECRET not in str(rejected.value)
    assert rejected.value.__cause__ is None
    assert rejected.value.__suppress_context__


def test_missing_required_config_is_named(layer_registry: registry.LayerRegistry) -> None:
    with pytest.raises(
        errors.InvalidRequest, match=r"Layer 'output' \(agentrun.output\) has invalid config: jsonSchema"
    ):
        layer_registry.create("output", "agentrun.output", {})


class _Impostor(base.Layer):
    type_id: ClassVar[str] = "plain.prompt"
    config_model: ClassVar[type[base.LayerConfig]] = base.LayerConfig

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        raise AssertionError("never entered")


def test_two_types_cannot_share_an_id() -> None:
    layers = registry.LayerRegistry([prompt.PromptLayer])
    layers.register(prompt.PromptLayer)  # the same class again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        layers.register(_Impostor)
    assert layers.type_ids["plain.prompt"] is prompt.PromptLayer
