"""``model.openai``: any OpenAI-compatible Chat Completions endpoint, through pydantic-ai."""

from __future__ import annotations

import pydantic
from pydantic_ai import settings as ai_settings

from agentrun.api import models
from agentrun.layers import base
from agentrun.layers.builtin import model

# The openai SDK retries 429/5xx on its own, for up to a minute with retry-after; the run's
# deadline and the operator's classification are the better place for that decision.
SDK_RETRIES = 0

DEFAULT_REQUEST_TIMEOUT_SECONDS = 120.0
"""How long one model request may wait to connect or for data when ``settings.timeoutSeconds`` is not given."""


class ModelSettingsConfig(base.LayerConfig):
    temperature: float | None = pydantic.Field(None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = pydantic.Field(None, ge=1, description="Most tokens in one answer.")
    top_p: float | None = pydantic.Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    seed: int | None = pydantic.Field(None, description="Seed for providers that support reproducible sampling.")
    timeout_seconds: float | None = pydantic.Field(
        None,
        gt=0,
        description=(
            "How long one model request may wait to connect or for data, in seconds "
            f"(default {DEFAULT_REQUEST_TIMEOUT_SECONDS:g})."
        ),
    )

    def to_pydantic_ai(self) -> ai_settings.ModelSettings:
        settings = ai_settings.ModelSettings(
            max_retries=SDK_RETRIES,
            timeout=self.timeout_seconds if self.timeout_seconds is not None else DEFAULT_REQUEST_TIMEOUT_SECONDS,
        )
        if self.temperature is not None:
            settings["temperature"] = self.temperature
        if self.max_tokens is not None:
            settings["max_tokens"] = self.max_tokens
        if self.top_p is not None:
            settings["top_p"] = self.top_p
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


class OpenAIConfig(base.LayerConfig):
    model: str = pydantic.Field(min_length=1, description="Model name as the endpoint knows it.")
    base_url: str = pydantic.Field(
        "https://api.openai.com/v1", alias="baseURL", description="Base URL of the Chat Completions API."
    )
    api_key_secret_ref: models.SecretKeyRef | None = pydantic.Field(
        None, description="Secret key holding the API key. Omit for endpoints without authentication."
    )
    settings: ModelSettingsConfig = pydantic.Field(default_factory=ModelSettingsConfig)


class OpenAILayer(model.ModelLayer):
    """A chat model behind an OpenAI-compatible endpoint; the key comes from a Secret."""

    type_id = "model.openai"
    config_model = OpenAIConfig
    config: OpenAIConfig

    async def provide(self, plan: base.AgentPlan, context: base.RunContext) -> None:
        # The openai SDK costs ~25 MB of memory: load it when a run first needs it, not at start-up.
        from pydantic_ai.models import openai as ai_openai
        from pydantic_ai.providers import openai_compatible

        ref = self.config.api_key_secret_ref
        # Endpoints without authentication still need a non-empty key for the SDK.
        api_key = await context.read_secret(ref.name, ref.key) if ref is not None else "unused"
        provider = openai_compatible.OpenAICompatibleProvider(
            "openai-compatible", base_url=self.config.base_url, api_key=api_key
        )
        plan.model = ai_openai.OpenAIChatModel(self.config.model, provider=provider)
        plan.model_settings = self.config.settings.to_pydantic_ai()
