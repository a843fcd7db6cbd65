"""``agentrun.output``: structured output described by a JSON Schema."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic

from agentrun.layers import base, errors, schema


class OutputConfig(base.LayerConfig):
    json_schema: dict[str, Any] = pydantic.Field(
        alias="jsonSchema",
        description=(
            "JSON Schema 2020-12 of the output object. Refs only into its own $defs; patterns use RE2 syntax "
            f"(no backreferences or lookaround); at most {schema.MAX_SCHEMA_NODES} values and "
            f"{schema.MAX_SCHEMA_DEPTH} levels of nesting once its refs are inlined."
        ),
    )
    description: str | None = pydantic.Field(None, description="What the output is, shown to the model.")
    strict: bool | None = pydantic.Field(None, description="Ask the provider for strict schema adherence.")


class OutputLayer(base.Layer):
    """Makes the run produce a JSON object valid against ``jsonSchema``."""

    type_id = "agentrun.output"
    config_model = OutputConfig
    config: OutputConfig

    async def enter(self, plan: base.AgentPlan, context: base.RunContext, state: base.State | None) -> None:
        try:
            # Bounded, but CPU work on a user's document: off the event loop.
            prepared = await asyncio.to_thread(schema.prepare_output_schema, self.config.json_schema)
        except schema.SchemaRejected as rejected:
            raise errors.InvalidRequest(str(rejected)) from None
        title = prepared.get("title")
        plan.output = base.OutputSpec(
            json_schema=prepared,
            name=title if isinstance(title, str) and title else "output",
            description=self.config.description,
            strict=self.config.strict,
        )
