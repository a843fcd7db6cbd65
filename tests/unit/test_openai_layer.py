"""``model.openai``: the settings it sends, and the default request timeout."""

from __future__ import annotations

from typing import Any

import pytest

from agentrun.layers import base, registry
from agentrun.layers.builtin import openai


async def _key(name: str, key: str) -> str:
    return "sk-test-key-0000"


def config(**settings: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "baseURL": "http://model.invalid/v1",
        "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"},
        "settings": settings,
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({}, {"timeout": openai.DEFAULT_REQUEST_TIMEOUT_SECONDS, "max_retries": 0}, id="defaults"),
        pytest.param({"timeoutSeconds": 5}, {"timeout": 5, "max_retries": 0}, id="explicit-timeout-wins"),
        pytest.param(
            {"temperature": 0.2, "maxTokens": 100, "topP": 0.9, "seed": 7},
            {
                "timeout": openai.DEFAULT_REQUEST_TIMEOUT_SECONDS,
                "max_retries": 0,
                "temperature": 0.2,
                "max_tokens": 100,
                "top_p": 0.9,
                "seed": 7,
            },
            id="sampling",
        ),
    ],
)
async def test_model_settings_always_carry_a_request_timeout(
    layer_registry: registry.LayerRegistry, settings: dict[str, Any], expected: dict[str, Any]
) -> None:
    layer = layer_registry.create("llm", "model.openai", config(**settings))
    plan = base.AgentPlan()
    await layer.enter(plan, base.RunContext(namespace="ns", read_secret=_key), None)
    assert dict(plan.model_settings) == expected
    assert plan.model is not None


def test_the_default_timeout_is_documented_on_the_field() -> None:
    description = openai.ModelSettingsConfig.model_fields["timeout_seconds"].description or ""
    assert f"default {openai.DEFAULT_REQUEST_TIMEOUT_SECONDS:g}" in description
