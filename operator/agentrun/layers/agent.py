"""Run the agent the layers planned, through pydantic-ai.

This is the agent loop: one ``Agent`` per run, structured output validated against
the output layer's schema (the model is asked again on invalid output), coarse
progress (model requests, tool calls) reported as it happens, and provider errors
classified into the run's failure reasons.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import jsonschema
import pydantic_ai
from pydantic_ai import messages as ai_messages

from agentrun.api import models
from agentrun.layers import base, errors, schema

EMPTY_PROMPTS_MESSAGE = "run.user_prompts must not be empty"
OUTPUT_RETRIES = 2
OUTPUT_TOOL_PREFIX = "final_result"

Progress = Callable[[str, dict[str, Any]], None]
"""Receives ``(event_type, data)`` for each coarse progress event."""


@dataclasses.dataclass(frozen=True)
class AgentResult:
    output: Any
    usage: models.Usage
    messages: list[ai_messages.ModelMessage]


def _output_type(spec: base.OutputSpec) -> Any:
    # StructuredDict annotates the mapping it is given: hand it a copy.
    schema = copy.deepcopy(spec.json_schema)
    structured = pydantic_ai.StructuredDict(schema, name=spec.name, description=spec.description)
    if spec.strict is None:
        return structured
    return pydantic_ai.ToolOutput(structured, strict=spec.strict)


def _build(plan: base.AgentPlan) -> pydantic_ai.Agent[None, Any]:
    if plan.model is None:
        raise errors.InvalidRequest("The composition has no model layer: add a layer named 'llm' of a model.* type.")
    agent: pydantic_ai.Agent[None, Any] = pydantic_ai.Agent(
        plan.model,
        instructions="\n\n".join(plan.system_prompts) or None,
        output_type=_output_type(plan.output) if plan.output else str,
        model_settings=plan.model_settings or None,
        retries=OUTPUT_RETRIES,
    )
    if plan.output is not None:
        validator = schema.output_validator(plan.output.json_schema)

        def _first_error(value: Any) -> str | None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
            if error is None:
                return None
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return f"output does not match the schema at {where}: {error.message}"

        @agent.output_validator
        async def _matches_schema(value: Any) -> Any:
            # Off the event loop: the output's size is the model's to choose, and RE2 lets
            # other threads run while it matches.
            problem = await asyncio.to_thread(_first_error, value)
            if problem is not None:
                raise pydantic_ai.ModelRetry(problem)
            return value

    return agent


def _provider_message(error: pydantic_ai.ModelHTTPError) -> str:
    body = error.body
    detail = body.get("message") if isinstance(body, dict) else body
    code = error.provider_error_code or error.provider_error_type
    suffix = f" ({code})" if code else ""
    return f"model '{error.model_name}' returned HTTP {error.status_code}: {detail or 'no detail'}{suffix}"


async def run(plan: base.AgentPlan, progress: Progress) -> AgentResult:
    """Run the planned agent to its final output, or raise a classified RunFailure."""
    prompts = [prompt for prompt in plan.user_prompts if prompt.strip()]
    if not prompts:
        raise errors.InvalidRequest(EMPTY_PROMPTS_MESSAGE)
    agent = _build(plan)
    requests = 0
    try:
        # One prompt is sent as plain text; several become the parts of one user message.
        user_prompt: str | list[str] = prompts[0] if len(prompts) == 1 else prompts
        async with agent.iter(user_prompt, message_history=plan.history or None) as agent_run:
            async for node in agent_run:
                if pydantic_ai.Agent.is_model_request_node(node):
                    requests += 1
                    progress(models.EventType.MODEL_REQUEST.value, {"request": requests})
                elif pydantic_ai.Agent.is_call_tools_node(node):
                    for part in node.model_response.parts:
                        if isinstance(part, ai_messages.ToolCallPart) and not _is_output_tool(part.tool_name):
                            progress(models.EventType.TOOL_CALL.value, {"tool": part.tool_name})
            result = agent_run.result
    except pydantic_ai.ModelHTTPError as error:
        raise errors.ModelError(_provider_message(error), status_code=error.status_code) from None
    except pydantic_ai.UnexpectedModelBehavior as error:
        if "output retries" in error.message:
            cause = f": {error.__cause__}" if error.__cause__ else ""
            raise errors.OutputInvalid(
                f"the model's output did not match the output schema after {OUTPUT_RETRIES + 1} attempts{cause}"
            ) from None
        raise errors.ModelError(f"the model behaved unexpectedly: {error.message}") from None
    except pydantic_ai.ModelAPIError as error:
        raise errors.ModelError(f"the model endpoint could not be used: {error}") from None
    if result is None:
        raise errors.ModelError("the model run ended without a result")
    usage = result.usage
    return AgentResult(
        output=result.output,
        usage=models.Usage(requests=usage.requests, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
        messages=result.all_messages(),
    )


def _is_output_tool(name: str) -> bool:
    # pydantic-ai delivers structured output through tools named final_result*: that is the answer.
    return name.startswith(OUTPUT_TOOL_PREFIX)
