"""What a runner Pod writes on stdout, and how the operator reads it back.

The runner prints one JSON object per line: progress events, each numbered 1, 2, ... within
the attempt, then exactly one result. Every record carries the ``agentrun`` key, so the
operator tells records apart from anything else in the container's log (library log lines,
a traceback) and keeps those only as the log's last lines for a failure message.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from agentrun.api import models

MARKER = "agentrun"
VERSION = 1

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

MAX_SUMMARY_BYTES = 4096
"""The kubelet keeps at most 4 KiB of a container's termination message."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One progress event of the attempt."""

    seq: int
    type: str
    time: datetime.datetime
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Result:
    """How the runner ended: a result, a classified failure, or cancelled by SIGTERM."""

    outcome: str
    output: Any = None
    usage: models.Usage | None = None
    session_snapshot: models.SessionSnapshot | None = None
    reason: str | None = None
    message: str = ""
    status_code: int | None = None
    events: int = 0
    """How many progress events the runner wrote before this result."""


def _line(record: dict[str, Any]) -> str:
    return json.dumps({MARKER: VERSION, **record}, separators=(",", ":"), allow_nan=False)


def event_line(event: Event) -> str:
    return _line(
        {
            "kind": "event",
            "seq": event.seq,
            "type": event.type,
            "time": event.time.astimezone(datetime.UTC).isoformat(),
            "data": event.data,
        }
    )


def result_record(result: Result) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "result", "outcome": result.outcome, "events": result.events}
    if result.outcome == SUCCEEDED:
        record["output"] = result.output
        if result.session_snapshot is not None:
            record["sessionSnapshot"] = result.session_snapshot.to_wire()
    if result.usage is not None:
        record["usage"] = result.usage.to_wire()
    if result.reason is not None:
        record["reason"] = result.reason
    if result.message:
        record["message"] = result.message
    if result.status_code is not None:
        record["statusCode"] = result.status_code
    return record


def result_line(result: Result) -> str:
    return _line(result_record(result))


def summary(result: Result, *, token_mounted: bool) -> str:
    """The compact termination message: how the runner ended, never the output itself.

    ``tokenMounted`` says whether an API token was found in the container: it must not be.
    """
    record: dict[str, Any] = {"outcome": result.outcome, "events": result.events, "tokenMounted": token_mounted}
    if result.reason:
        record["reason"] = result.reason
    if result.message:
        record["message"] = result.message[:1024]
    if result.usage is not None:
        record["usage"] = result.usage.to_wire()
    return json.dumps(record, separators=(",", ":"))[:MAX_SUMMARY_BYTES]


def parse(line: str) -> Event | Result | None:
    """The record on ``line``, or ``None`` for any other log line (or a record this version cannot read)."""
    text = line.strip()
    if not text.startswith("{") or f'"{MARKER}"' not in text[:32]:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get(MARKER) != VERSION:
        return None
    try:
        if record.get("kind") == "event":
            return Event(
                seq=int(record["seq"]),
                type=str(record["type"]),
                time=datetime.datetime.fromisoformat(record["time"]),
                data=dict(record.get("data") or {}),
            )
        if record.get("kind") == "result":
            snapshot = record.get("sessionSnapshot")
            usage = record.get("usage")
            return Result(
                outcome=str(record["outcome"]),
                output=record.get("output"),
                usage=models.Usage.model_validate(usage) if usage is not None else None,
                session_snapshot=models.SessionSnapshot.model_validate(snapshot) if snapshot is not None else None,
                reason=record.get("reason"),
                message=str(record.get("message") or ""),
                status_code=record.get("statusCode"),
                events=int(record.get("events") or 0),
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None
