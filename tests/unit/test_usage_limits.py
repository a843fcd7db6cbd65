"""Budgets (`spec.limits`): each stops a run at its exact limit, names it, and keeps the partial usage.

The runs use model.echo with scripted tool calls and in-memory tools, so every figure is
known in advance. Calling ``add`` twice after the prompt "what happened":

| request | input | output | what echo answers                              |
| ------- | ----- | ------ | ---------------------------------------------- |
| 1       | 2     | 2      | a call of add                                  |
| 2       | 3     | 2      | a call of add (it heard the first result, "5") |
| 3       | 4     | 9      | "echo: what happened \\| add: 5 \\| add: 5"    |

so the whole run uses 3 requests, 2 tool calls, 9 input, 13 output and 22 total tokens.
"""

from __future__ import annotations

from typing import Any

import local_tools
import pydantic_ai
import pytest
from pydantic_ai import messages as ai_messages
from pydantic_ai.models import function

from agentrun.api import models
from agentrun.layers import agent, base, compositor, errors

ADD = {"tool": "add", "args": {"a": 2, "b": 3}}
FULL_USAGE = models.Usage(requests=3, input_tokens=9, output_tokens=13)

Progress = list[tuple[str, dict[str, Any]]]


async def run(
    limits: dict[str, int] | None, run_context: base.RunContext, calls: list[dict[str, Any]] | None = None
) -> tuple[compositor.CompositionResult, Progress]:
    progress: Progress = []
    result = await compositor.run(
        local_tools.spec([ADD, ADD] if calls is None else calls, limits=limits),
        local_tools.layer_registry(),
        run_context,
        lambda kind, data: progress.append((kind, data)),
    )
    return result, progress


async def test_the_scripted_run_uses_what_the_table_says(run_context: base.RunContext) -> None:
    result, progress = await run(None, run_context)
    assert result.output == "echo: what happened | add: 5 | add: 5"
    assert result.usage == FULL_USAGE
    assert [kind for kind, _ in progress].count("model_request") == 3


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"maxRequests": 3}, id="maxRequests"),
        pytest.param({"maxToolCalls": 2}, id="maxToolCalls"),
        pytest.param({"maxInputTokens": 9}, id="maxInputTokens"),
        pytest.param({"maxOutputTokens": 13}, id="maxOutputTokens"),
        pytest.param({"maxTotalTokens": 22}, id="maxTotalTokens"),
        pytest.param(
            {"maxRequests": 3, "maxToolCalls": 2, "maxInputTokens": 9, "maxOutputTokens": 13, "maxTotalTokens": 22},
            id="all-at-once",
        ),
    ],
)
async def test_a_run_exactly_at_its_limit_succeeds(limits: dict[str, int], run_context: base.RunContext) -> None:
    result, _ = await run(limits, run_context)
    assert result.usage == FULL_USAGE


@pytest.mark.parametrize(
    ("limits", "message", "usage"),
    [
        pytest.param(
            {"maxRequests": 2},
            "budget exceeded: maxRequests is 2, the run needed 3",
            models.Usage(requests=2, input_tokens=5, output_tokens=4),
            id="maxRequests",
        ),
        pytest.param(
            {"maxToolCalls": 1},
            "budget exceeded: maxToolCalls is 1, the run needed 2",
            models.Usage(requests=2, input_tokens=5, output_tokens=4),
            id="maxToolCalls",
        ),
        pytest.param(
            {"maxToolCalls": 0},
            "budget exceeded: maxToolCalls is 0, the run needed 1",
            models.Usage(requests=1, input_tokens=2, output_tokens=2),
            id="maxToolCalls-zero",
        ),
        pytest.param(
            {"maxInputTokens": 8},
            "budget exceeded: maxInputTokens is 8, the run used 9",
            FULL_USAGE,
            id="maxInputTokens",
        ),
        pytest.param(
            {"maxOutputTokens": 12},
            "budget exceeded: maxOutputTokens is 12, the run used 13",
            FULL_USAGE,
            id="maxOutputTokens",
        ),
        pytest.param(
            {"maxTotalTokens": 21},
            "budget exceeded: maxTotalTokens is 21, the run used 22",
            FULL_USAGE,
            id="maxTotalTokens",
        ),
        pytest.param(
            {"maxTotalTokens": 8},
            "budget exceeded: maxTotalTokens is 8, the run used 9",
            models.Usage(requests=2, input_tokens=5, output_tokens=4),
            id="maxTotalTokens-crossed-by-an-earlier-answer",
        ),
    ],
)
async def test_one_below_the_limit_fails_naming_the_limit_and_the_value(
    limits: dict[str, int], message: str, usage: models.Usage, run_context: base.RunContext
) -> None:
    with pytest.raises(errors.BudgetExceeded) as failed:
        await run(limits, run_context)
    assert failed.value.reason is models.Reason.BUDGET_EXCEEDED
    assert failed.value.message == message
    assert failed.value.usage == usage


async def test_a_request_refused_by_the_budget_is_never_reported_as_made(run_context: base.RunContext) -> None:
    progress: Progress = []
    with pytest.raises(errors.BudgetExceeded):
        await compositor.run(
            local_tools.spec([ADD, ADD], limits={"maxRequests": 2}),
            local_tools.layer_registry(),
            run_context,
            lambda kind, data: progress.append((kind, data)),
        )
    kinds = [kind for kind, _ in progress]
    assert kinds == ["model_request", "tool_call", "tool_result", "model_request", "tool_call", "tool_result"]


async def test_without_limits_requests_are_capped_by_the_default(run_context: base.RunContext) -> None:
    calls = [ADD] * agent.DEFAULT_MAX_REQUESTS
    with pytest.raises(errors.BudgetExceeded) as failed:
        await run(None, run_context, calls)
    limit = agent.DEFAULT_MAX_REQUESTS
    assert failed.value.message == f"budget exceeded: maxRequests is {limit} (the default), the run needed {limit + 1}"
    assert failed.value.usage is not None
    assert failed.value.usage.requests == limit


def test_every_limit_maps_to_pydantic_ais_usage_limits() -> None:
    limits = models.Limits(
        max_requests=1, max_input_tokens=2, max_output_tokens=3, max_total_tokens=4, max_tool_calls=5
    )
    mapped = agent.usage_limits(limits)
    assert (
        mapped.request_limit,
        mapped.input_tokens_limit,
        mapped.output_tokens_limit,
        mapped.total_tokens_limit,
        mapped.tool_calls_limit,
    ) == (1, 2, 3, 4, 5)
    unset = agent.usage_limits(None)
    assert unset.request_limit == agent.DEFAULT_MAX_REQUESTS
    assert unset.tool_calls_limit is None
    assert not unset.has_token_limits()


async def test_a_model_error_after_some_requests_carries_the_usage_so_far() -> None:
    def answer(messages: list[ai_messages.ModelMessage], info: function.AgentInfo) -> ai_messages.ModelResponse:
        if len(messages) > 1:
            raise pydantic_ai.ModelHTTPError(status_code=503, model_name="flaky", body={"message": "overloaded"})
        return ai_messages.ModelResponse(
            parts=[ai_messages.ToolCallPart("add", {"a": 1, "b": 1})],
            usage=pydantic_ai.RequestUsage(input_tokens=7, output_tokens=3),
        )

    from pydantic_ai import toolsets

    tools: toolsets.FunctionToolset[None] = toolsets.FunctionToolset()
    tools.add_function(lambda a, b: a + b, name="add")
    plan = base.AgentPlan(user_prompts=["go"], model=function.FunctionModel(answer), toolsets=[tools])
    with pytest.raises(errors.ModelError) as failed:
        await agent.run(plan, lambda kind, data: None)
    assert failed.value.status_code == 503
    assert failed.value.usage == models.Usage(requests=1, input_tokens=7, output_tokens=3)


async def test_a_failure_before_any_request_carries_no_usage(run_context: base.RunContext) -> None:
    def answer(messages: list[ai_messages.ModelMessage], info: function.AgentInfo) -> ai_messages.ModelResponse:
        raise pydantic_ai.ModelHTTPError(status_code=400, model_name="strict", body={"message": "bad request"})

    plan = base.AgentPlan(user_prompts=["go"], model=function.FunctionModel(answer))
    with pytest.raises(errors.ModelError) as failed:
        await agent.run(plan, lambda kind, data: None)
    assert failed.value.usage is None
