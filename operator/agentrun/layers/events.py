"""The progress events a run reports about its tools, and the bounds on what they carry.

A tool call's arguments and a tool's result can be of any size, and each event lands in
the run's status. The agent describes calls and results in full; the compositor masks
credentials in them and only then cuts every text to :data:`MAX_PAYLOAD_BYTES` with
:func:`bounded`, so a cut never splits a credential and leaves part of it readable.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai import messages as ai_messages

MAX_PAYLOAD_BYTES = 512
"""Most bytes of UTF-8 in one text of a progress event (tool arguments, a tool's result)."""
MAX_NAME_BYTES = 128
"""Most bytes of UTF-8 in a tool name or call id in a progress event."""
ELLIPSIS = "…"

_NAME_FIELDS = frozenset({"tool", "callId"})


def tool_call(part: ai_messages.ToolCallPart) -> dict[str, Any]:
    """A ``tool_call`` event: which tool the model called, with which arguments (JSON text)."""
    return {"tool": part.tool_name, "callId": part.tool_call_id, "args": part.args_as_json_str()}


def tool_result(part: ai_messages.ToolReturnPart) -> dict[str, Any]:
    """A ``tool_result`` event: what the call returned, or why it failed.

    ``outcome`` is ``success``, or ``failed``/``retried`` when the model was told about an
    error instead (``retried`` asks the model to call again with corrected arguments).
    """
    return {
        "tool": part.tool_name,
        "callId": part.tool_call_id,
        "outcome": part.outcome,
        "result": _text(part.content),
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    try:
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False, default=str)
    except ValueError:  # a circular structure: show what it is, not what it holds
        return repr(type(content))


def bounded(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every top-level text cut to its byte limit; ``truncated`` lists the fields cut."""
    shaped: dict[str, Any] = {}
    cut: list[str] = []
    for key, value in data.items():
        if isinstance(value, str):
            limit = MAX_NAME_BYTES if key in _NAME_FIELDS else MAX_PAYLOAD_BYTES
            shortened = truncate(value, limit)
            if shortened != value:
                cut.append(key)
            value = shortened
        shaped[key] = value
    if cut:
        shaped["truncated"] = cut
    return shaped


def truncate(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` bytes of UTF-8, else its longest prefix that fits with an ellipsis."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    room = limit - len(ELLIPSIS.encode())
    # Cutting bytes may split a character: drop the partial one rather than emit invalid UTF-8.
    return encoded[:room].decode("utf-8", "ignore") + ELLIPSIS
