"""The agent loop: failure classification and output validation, driven by pydantic-ai function models."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx2
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


# --- user patterns --------------------------------------------------------------------

HOSTILE_TEXT = "a" * 64 + "!"
"""Almost matches ``^(a+)+$``: a backtracking engine would try 2**64 ways."""


@pytest.mark.parametrize(
    ("output_schema", "arguments", "detail"),
    [
        pytest.param(
            {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}},
            {"code": HOSTILE_TEXT},
            "does not match '^(a+)+$'",
            id="pattern",
        ),
        pytest.param(
            {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False},
            {HOSTILE_TEXT: 1},
            "not allowed",
            id="additionalProperties-with-patternProperties",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"pattern": "^(a+)+$"}},
            {HOSTILE_TEXT: 1},
            "does not match '^(a+)+$'",
            id="propertyNames",
        ),
    ],
)
async def test_catastrophic_patterns_do_not_stall_the_run(
    output_schema: dict[str, Any], arguments: dict[str, Any], detail: str
) -> None:
    model = CountingModel(tool_call(arguments))
    started = time.perf_counter()
    with pytest.raises(errors.OutputInvalid) as failed:
        await agent.run(model.plan(output=output_schema), no_progress)
    assert detail in failed.value.message
    assert time.perf_counter() - started < 2


async def test_a_matching_pattern_property_validates_its_value() -> None:
    output_schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}}
    model = CountingModel(tool_call({"a" * 64: "not an integer"}))
    with pytest.raises(errors.OutputInvalid, match="is not of type 'integer'"):
        await agent.run(model.plan(output=output_schema), no_progress)


SENTINEL = "^(?:sentinel-[0-9]+)+$"
SENTINEL_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": SENTINEL}},
    "patternProperties": {SENTINEL: {"type": "string"}},
    "required": ["code"],
}


@pytest.fixture
def python_re_refuses_the_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ``re`` fails the test if it is ever handed the user's pattern."""
    compile_pattern = re._compile  # type: ignore[attr-defined]

    def guarded(pattern: Any, flags: Any) -> Any:
        if isinstance(pattern, str) and "sentinel" in pattern:
            raise AssertionError(f"Python's re was asked to compile the user's pattern {pattern!r}")
        return compile_pattern(pattern, flags)

    monkeypatch.setattr(re, "_compile", guarded)


def openai_model(answer: dict[str, Any]) -> Any:
    """pydantic-ai's OpenAI chat model over an in-memory transport that answers with ``answer``."""
    from pydantic_ai.models import openai as ai_openai
    from pydantic_ai.providers import openai_compatible

    def reply(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        call = {"id": "c1", "type": "function", "function": {"name": body["tools"][0]["function"]["name"]}}
        call["function"]["arguments"] = json.dumps(answer)
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        completion = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }
        return httpx2.Response(200, json=completion)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(reply))
    provider = openai_compatible.OpenAICompatibleProvider(
        "test", base_url="http://model.invalid/v1", api_key="unused", http_client=client
    )
    return ai_openai.OpenAIChatModel("gpt-4o-mini", provider=provider)


@pytest.mark.usefixtures("python_re_refuses_the_sentinel")
@pytest.mark.parametrize("strict", [pytest.param(None, id="default"), pytest.param(True, id="strict")])
@pytest.mark.parametrize("kind", ["function-model", "openai-model"])
async def test_pydantic_ai_never_hands_user_patterns_to_python_re(kind: str, strict: bool | None) -> None:
    answer = {"code": "sentinel-1sentinel-2", "sentinel-3": "x"}
    chat_model = openai_model(answer) if kind == "openai-model" else CountingModel(tool_call(answer)).plan().model
    plan = base.AgentPlan(
        user_prompts=["give me a code"],
        model=chat_model,
        output=base.OutputSpec(json_schema=SENTINEL_SCHEMA, name="output", description=None, strict=strict),
    )
    result = await agent.run(plan, no_progress)
    assert result.output == answer
