"""A run's progress events, collected between two status writes."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

from agentrun.runtime import transitions

Clock = Callable[[], datetime.datetime]


class ProgressSink:
    """Collects a run's progress events until the next status write takes them."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.pending: list[transitions.PendingEvent] = []
        self.arrived = asyncio.Event()
        self.stop_requested = asyncio.Event()
        """Set when the attempt is stopped (cancel, delete): a runner that can end its work
        gracefully (a Pod that flushes on SIGTERM) does so, then raises CancelledError."""
        self._last: datetime.datetime | None = None

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.emit_at(event_type, data, at=self._clock())

    def emit_at(self, event_type: str, data: dict[str, Any], *, at: datetime.datetime, seq: int | None = None) -> None:
        """An event that happened at ``at``; ``seq`` is a pod runner's own number for it."""
        # Strictly increasing times make (type, time) identify an event, so a retried write
        # never records the same event twice (see transitions.with_events).
        if self._last is not None and at <= self._last:
            at = self._last + datetime.timedelta(microseconds=1)
        self._last = at
        self.pending.append(transitions.PendingEvent(event_type, at, data or None, runner_seq=seq))
        self.arrived.set()

    def taken(self, count: int) -> None:
        """The first ``count`` pending events were written."""
        del self.pending[:count]
        if not self.pending:
            self.arrived.clear()
