"""How a runner Pod's end becomes the run's reason and message.

The runner's own failures keep their reasons. A Pod that ends without a result (OOMKilled,
evicted, preempted, its node lost, a non-zero exit) is ``PodFailed``, with the cause and
the container's last log lines in the message, masked.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from agentrun.api import models
from agentrun.layers import errors, redaction

TAIL_LINES = 8
MAX_TAIL_CHARS = 1200


class PodFailed(errors.RunFailure):
    """The runner Pod ended without a result."""

    reason = models.Reason.POD_FAILED


class IsolationUnavailable(errors.RunFailure):
    """The RuntimeClass the run asks for does not exist: the run fails closed."""

    reason = models.Reason.ISOLATION_UNAVAILABLE


class ImageUnavailable(errors.RunFailure):
    """The runner image cannot be pulled."""

    reason = models.Reason.IMAGE_UNAVAILABLE


class DeadlineExceeded(errors.RunFailure):
    """The run's deadline passed before its Pod ran (unschedulable) or the Pod's own deadline ended it."""

    reason = models.Reason.DEADLINE_EXCEEDED


class RunnerFailure(errors.RunFailure):
    """A failure the runner classified itself; its reason is kept as the runner reported it."""

    def __init__(
        self, reason: models.Reason, message: str, *, status_code: int | None = None, usage: models.Usage | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, usage=usage)
        self.reason = reason


def runner_reason(value: str | None) -> models.Reason:
    """The reason a runner reported; one this version does not know is an internal error."""
    try:
        return models.Reason(value or "")
    except ValueError:
        return models.Reason.INTERNAL_ERROR


class LogTail:
    """The last lines of the container's log that were not records, for failure messages."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def add(self, line: str) -> None:
        if line.strip():
            self._lines.append(line.rstrip()[:400])

    def clear(self) -> None:
        self._lines.clear()

    def text(self, redactor: redaction.Redactor) -> str:
        joined = " | ".join(redaction.redact_credentials(redactor.redact(line)) for line in self._lines)
        return joined[-MAX_TAIL_CHARS:]


def with_tail(message: str, tail: str) -> str:
    return f"{message}; last log lines: {tail}" if tail else message


def cause(state_reason: str | None, disruption: str | None, container_reason: str | None, exit_code: int | None) -> str:
    """The cause of a Pod's end, in words, most specific first."""
    if container_reason == "OOMKilled":
        return f"was OOMKilled (exit code {exit_code}): its memory limit is too low"
    if disruption:
        return f"was disrupted ({disruption})"
    if state_reason == "Evicted":
        return "was evicted"
    if state_reason in ("NodeLost", "UnexpectedAdmissionError", "NodeAffinity", "Shutdown", "Terminated"):
        return f"was lost with its node ({state_reason})"
    if exit_code is not None and exit_code != 0:
        return f"exited with code {exit_code}{f' ({container_reason})' if container_reason else ''} without a result"
    if exit_code == 0:
        return "exited without writing a result"
    return f"ended ({state_reason or 'no reason given'}) without a result"


def describe(parts: Iterable[str | None]) -> str:
    return ": ".join(part for part in parts if part)
