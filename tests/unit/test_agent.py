"""The agent loop's failure classification, driven by pydantic-ai function models."""

from __future__ import annotations

from typing import Any

import pydantic_ai
import pytest
from pydantic_ai import messages as ai_messages
from pydantic_ai import usage as ai_usage
from pydantic_ai.models import function

from agentrun.api import models
from agentrun.layers import agent, base, errors

COUNT_SCHEMA = {
    "type": "object",
    "properties": {"count": {"type": "integer", "minimum": 0}},
    "required": ["count"],
}


class CountingModel:
    """A function model that answers with ``reply`` and counts its calls."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.calls = 0

    def __call__(self, messages: list[ai_messages.ModelMessage], info: function.AgentInfo) -> ai_messages.ModelResponse:
        self.calls += 1
        return self.reply(info)

    def plan(self, *, output: dict[str, Any] | None = None) -> base.AgentPlan:
        return base.AgentPlan(
            user_prompts=["count the incidents"],
            model=function.FunctionModel(self),
            output=base.OutputSpec(json_schema=output, name="output", description=None, strict=None)
            if output
            else None,
        )


def tool_call(arguments: dict[str, Any]) -> Any:
    return lambda info: ai_messages.ModelResponse(
        parts=[ai_messages.ToolCallPart(info.output_tools[0].name, arguments)]
    )


def no_progress(kind: str, data: dict[str, Any]) -> None:
    pass


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        pytest.param({"count": "many"}, "'many' is not of type 'integer'", id="wrong-type"),
        pytest.param({"count": -1}, "-1 is less than the minimum of 0", id="schema-only-rule"),
        pytest.param({}, "'count' is a required property", id="missing-field"),
    ],
)
async def test_schema_invalid_output_is_output_invalid_after_retries(arguments: dict[str, Any], detail: str) -> None:
    model = CountingModel(tool_call(arguments))
    with pytest.raises(errors.OutputInvalid) as failed:
        await agent.run(model.plan(output=COUNT_SCHEMA), no_progress)
    assert model.calls == agent.OUTPUT_RETRIES + 1
    assert failed.value.reason is models.Reason.OUTPUT_INVALID
    assert f"after {agent.OUTPUT_RETRIES + 1} attempts" in failed.value.message
    assert detail in failed.value.message


async def test_output_corrected_on_retry_succeeds() -> None:
    answers = iter([{"count": -1}, {"count": 4}])
    model = CountingModel(lambda info: tool_call(next(answers))(info))
    progress: list[tuple[str, dict[str, Any]]] = []

    result = await agent.run(model.plan(output=COUNT_SCHEMA), lambda kind, data: progress.append((kind, data)))

    assert result.output == {"count": 4}
    assert model.calls == 2
    assert result.usage.requests == 2
    assert progress == [("model_request", {"request": 1}), ("model_request", {"request": 2})]


def raising(error: Exception) -> Any:
    def reply(info: function.AgentInfo) -> ai_messages.ModelResponse:
        raise error

    return reply


async def test_provider_rate_limit_is_a_model_error_with_status_and_detail() -> None:
    model = CountingModel(
        raising(pydantic_ai.ModelHTTPError(status_code=429, model_name="m", body={"message": "Rate limit reached"}))
    )
    with pytest.raises(errors.ModelError) as failed:
        await agent.run(model.plan(), no_progress)
    assert failed.value.reason is models.Reason.MODEL_ERROR
    assert "429" in failed.value.message
    assert "Rate limit reached" in failed.value.message
    assert failed.value.message == "model 'm' returned HTTP 429: Rate limit reached"
    assert model.calls == 1  # classified, not retried in the loop


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            pydantic_ai.ModelHTTPError(status_code=500, model_name="m", body="upstream exploded"),
            "returned HTTP 500: upstream exploded",
            id="http-500-text-body",
        ),
        pytest.param(
            pydantic_ai.ModelHTTPError(status_code=503, model_name="m", body=None),
            "returned HTTP 503: no detail",
            id="http-503-no-body",
        ),
        pytest.param(
            pydantic_ai.UnexpectedModelBehavior("the model sent garbage"),
            "the model behaved unexpectedly: the model sent garbage",
            id="unexpected-behaviour",
        ),
        pytest.param(
            pydantic_ai.ModelAPIError(model_name="m", message="connection refused"),
            "the model endpoint could not be used",
            id="api-error",
        ),
    ],
)
async def test_provider_errors_are_model_errors(error: Exception, expected: str) -> None:
    model = CountingModel(raising(error))
    with pytest.raises(errors.ModelError) as failed:
        await agent.run(model.plan(), no_progress)
    assert expected in failed.value.message


async def test_text_answer_and_usage() -> None:
    model = CountingModel(
        lambda info: ai_messages.ModelResponse(
            parts=[ai_messages.TextPart("fine")], usage=ai_usage.RequestUsage(input_tokens=7, output_tokens=2)
        )
    )
    result = await agent.run(model.plan(), no_progress)
    assert result.output == "fine"
    assert result.usage == models.Usage(requests=1, input_tokens=7, output_tokens=2)
    assert [message.kind for message in result.messages] == ["request", "response"]


async def test_no_model_is_an_invalid_request() -> None:
    with pytest.raises(errors.InvalidRequest, match="no model layer"):
        await agent.run(base.AgentPlan(user_prompts=["hi"]), no_progress)
