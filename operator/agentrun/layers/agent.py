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
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema
import pydantic_ai
from pydantic_ai import exceptions as ai_exceptions
from pydantic_ai import messages as ai_messages
from pydantic_ai import usage as ai_usage

from agentrun.api import models
from agentrun.layers import base, errors, events, schema

EMPTY_PROMPTS_MESSAGE = "run.user_prompts must not be empty"
OUTPUT_RETRIES = 2
OUTPUT_TOOL_PREFIX = "final_result"
DEFAULT_MAX_REQUESTS = 50
"""Model requests a run may make when ``spec.limits.maxRequests`` does not say."""
TOOL_NAME_CONFLICT = "conflicts with existing tool"
"""How pydantic-ai says that two toolsets offer a tool of the same name."""

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
        toolsets=plan.toolsets,
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


def usage_limits(limits: models.Limits | None) -> ai_usage.UsageLimits:
    """pydantic-ai's usage limits for the run's budgets; requests are capped even when no budget is set."""
    limits = limits or models.Limits()
    return ai_usage.UsageLimits(
        request_limit=limits.max_requests if limits.max_requests is not None else DEFAULT_MAX_REQUESTS,
        input_tokens_limit=limits.max_input_tokens,
        output_tokens_limit=limits.max_output_tokens,
        total_tokens_limit=limits.max_total_tokens,
        tool_calls_limit=limits.max_tool_calls,
    )


class _Tally:
    """What the run has used so far, and the tool calls of the model's latest answer."""

    def __init__(self) -> None:
        self.usage = ai_usage.RunUsage()
        self.asked_tool_calls = 0
        self.reported_results: set[str] = set()

    def partial(self) -> models.Usage | None:
        if not self.usage.requests:
            return None
        return _usage(self.usage)


def _usage(usage: ai_usage.RunUsage) -> models.Usage:
    return models.Usage(requests=usage.requests, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


async def run(plan: base.AgentPlan, progress: Progress, limits: models.Limits | None = None) -> AgentResult:
    """Run the planned agent to its final output, or raise a classified RunFailure.

    ``limits`` are enforced by pydantic-ai as the run goes: requests and tool calls before
    they are made, tokens after each answer (the answer that crosses a token budget is the
    last). A failure carries the usage up to that point once the model was asked anything.
    """
    prompts = [prompt for prompt in plan.user_prompts if prompt.strip()]
    if not prompts:
        raise errors.InvalidRequest(EMPTY_PROMPTS_MESSAGE)
    agent = _build(plan)
    budget = usage_limits(limits)
    tally = _Tally()
    try:
        result = await _drive(agent, plan, prompts, budget, tally, progress)
    except errors.RunFailure as failure:
        if failure.usage is None:
            failure.usage = tally.partial()
        raise
    except ai_exceptions.UsageLimitExceeded as error:
        defaulted = limits is None or limits.max_requests is None
        raise _budget_exceeded(budget, tally, error, requests_defaulted=defaulted) from None
    except pydantic_ai.ModelHTTPError as error:
        raise errors.ModelError(
            _provider_message(error), status_code=error.status_code, usage=tally.partial()
        ) from None
    except pydantic_ai.UnexpectedModelBehavior as error:
        if "output retries" in error.message:
            cause = f": {error.__cause__}" if error.__cause__ else ""
            raise errors.OutputInvalid(
                f"the model's output did not match the output schema after {OUTPUT_RETRIES + 1} attempts{cause}",
                usage=tally.partial(),
            ) from None
        raise errors.ModelError(f"the model behaved unexpectedly: {error.message}", usage=tally.partial()) from None
    except pydantic_ai.ModelAPIError as error:
        raise errors.ModelError(f"the model endpoint could not be used: {error}", usage=tally.partial()) from None
    except pydantic_ai.UserError as error:
        if TOOL_NAME_CONFLICT not in str(error):
            raise
        raise errors.InvalidRequest(f"two tool layers offer the same tool: {error}") from None
    return result


async def _drive(
    agent: pydantic_ai.Agent[None, Any],
    plan: base.AgentPlan,
    prompts: list[str],
    budget: ai_usage.UsageLimits,
    tally: _Tally,
    progress: Progress,
) -> AgentResult:
    # One prompt is sent as plain text; several become the parts of one user message.
    user_prompt: str | list[str] = prompts[0] if len(prompts) == 1 else prompts
    requests = 0
    async with agent.iter(
        user_prompt, message_history=plan.history or None, usage_limits=budget, usage=tally.usage
    ) as agent_run:
        async for node in agent_run:
            if pydantic_ai.Agent.is_model_request_node(node):
                _report_results(node.request.parts, tally, progress)
                if budget.request_limit is None or tally.usage.requests < budget.request_limit:
                    # Otherwise pydantic-ai refuses this request before making it: it never happens.
                    requests += 1
                    progress(models.EventType.MODEL_REQUEST.value, {"request": requests})
            elif pydantic_ai.Agent.is_call_tools_node(node):
                calls = [
                    part
                    for part in node.model_response.parts
                    if isinstance(part, ai_messages.ToolCallPart) and not _is_output_tool(part.tool_name)
                ]
                tally.asked_tool_calls = len(calls)
                for part in calls:
                    progress(models.EventType.TOOL_CALL.value, events.tool_call(part))
        result = agent_run.result
    if result is None:
        raise errors.ModelError("the model run ended without a result", usage=tally.partial())
    messages = result.all_messages()
    # Calls answered in the model's last turn are followed by no request: report them here.
    _report_results([part for message in result.new_messages() for part in message.parts], tally, progress)
    return AgentResult(output=result.output, usage=_usage(result.usage), messages=messages)


def _report_results(
    parts: Sequence[ai_messages.ModelRequestPart | ai_messages.ModelResponsePart], tally: _Tally, progress: Progress
) -> None:
    for part in parts:
        if (
            isinstance(part, ai_messages.ToolReturnPart)
            and not _is_output_tool(part.tool_name)
            and part.tool_call_id not in tally.reported_results
        ):
            tally.reported_results.add(part.tool_call_id)
            progress(models.EventType.TOOL_RESULT.value, events.tool_result(part))


def _budget_exceeded(
    budget: ai_usage.UsageLimits, tally: _Tally, error: ai_exceptions.UsageLimitExceeded, *, requests_defaulted: bool
) -> errors.BudgetExceeded:
    """Name the budget that stopped the run and the value that crossed it."""
    usage = tally.usage
    spent = [
        ("maxInputTokens", budget.input_tokens_limit, usage.input_tokens),
        ("maxOutputTokens", budget.output_tokens_limit, usage.output_tokens),
        ("maxTotalTokens", budget.total_tokens_limit, usage.total_tokens),
    ]
    # Token budgets are checked after each answer, so the one exceeded is the one over its limit.
    message = next(
        (
            f"budget exceeded: {name} is {limit}, the run used {used}"
            for name, limit, used in spent
            if limit is not None and used > limit
        ),
        None,
    )
    # Request and tool-call budgets are checked before the next one is made: name what it would have been.
    if message is None and "tool_calls_limit" in str(error):
        needed = usage.tool_calls + tally.asked_tool_calls
        message = f"budget exceeded: maxToolCalls is {budget.tool_calls_limit}, the run needed {needed}"
    if message is None and "request_limit" in str(error):
        default = " (the default)" if requests_defaulted else ""
        message = (
            f"budget exceeded: maxRequests is {budget.request_limit}{default}, the run needed {usage.requests + 1}"
        )
    return errors.BudgetExceeded(message or f"budget exceeded: {error}", usage=_usage(usage))


def _is_output_tool(name: str) -> bool:
    # pydantic-ai delivers structured output through tools named final_result*: that is the answer.
    return name.startswith(OUTPUT_TOOL_PREFIX)
