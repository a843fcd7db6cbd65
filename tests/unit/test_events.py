"""Tool progress events: their shape, and the bounds on what they carry."""

from __future__ import annotations

import json

import pytest
from pydantic_ai import messages as ai_messages

from agentrun.layers import events


def test_a_tool_call_names_the_tool_the_call_and_its_arguments() -> None:
    part = ai_messages.ToolCallPart("add", {"a": 2, "b": 3}, tool_call_id="call-1")
    assert events.tool_call(part) == {"tool": "add", "callId": "call-1", "args": '{"a":2,"b":3}'}


@pytest.mark.parametrize(
    ("content", "outcome", "shown"),
    [
        pytest.param("5", "success", "5", id="text"),
        pytest.param({"id": 42, "title": "é"}, "success", '{"id":42,"title":"é"}', id="object-as-compact-json"),
        pytest.param("incident 9 not found", "failed", "incident 9 not found", id="tool-error"),
        pytest.param("Unknown tool name: 'x'", "retried", "Unknown tool name: 'x'", id="retry"),
    ],
)
def test_a_tool_result_carries_the_outcome_and_the_result_as_text(content: object, outcome: str, shown: str) -> None:
    part = ai_messages.ToolReturnPart("lookup", content, tool_call_id="call-2", outcome=outcome)  # type: ignore[arg-type]
    assert events.tool_result(part) == {"tool": "lookup", "callId": "call-2", "outcome": outcome, "result": shown}


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("short", 10, "short", id="fits"),
        pytest.param("x" * 10, 10, "x" * 10, id="exactly-the-limit"),
        pytest.param("x" * 11, 10, "x" * 7 + "…", id="cut-with-an-ellipsis"),
        pytest.param("é" * 10, 10, "é" * 3 + "…", id="never-splits-a-character"),
        pytest.param("😀" * 3, 9, "😀" + "…", id="four-byte-characters"),
    ],
)
def test_truncate_keeps_a_prefix_within_the_byte_limit(text: str, limit: int, expected: str) -> None:
    shortened = events.truncate(text, limit)
    assert shortened == expected
    assert len(shortened.encode()) <= limit


def test_bounded_cuts_payloads_and_names_to_their_limits_and_says_which() -> None:
    data = {
        "tool": "t" * 1000,
        "callId": "c",
        "args": json.dumps({"text": "x" * 5000}),
        "request": 3,
    }
    shaped = events.bounded(data)
    assert len(shaped["tool"].encode()) == events.MAX_NAME_BYTES
    assert len(shaped["args"].encode()) <= events.MAX_PAYLOAD_BYTES
    assert shaped["args"].endswith(events.ELLIPSIS)
    assert shaped["callId"] == "c"
    assert shaped["request"] == 3
    assert shaped["truncated"] == ["tool", "args"]


def test_bounded_leaves_small_events_as_they_are() -> None:
    data = {"tool": "add", "callId": "call-1", "args": "{}"}
    assert events.bounded(data) == data
