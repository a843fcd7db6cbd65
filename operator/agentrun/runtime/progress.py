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
        self._last: datetime.datetime | None = None

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        # Strictly increasing times make (type, time) identify an event, so a retried write
        # never records the same event twice (see transitions.with_events).
        now = self._clock()
        if self._last is not None and now <= self._last:
            now = self._last + datetime.timedelta(microseconds=1)
        self._last = now
        self.pending.append(transitions.PendingEvent(event_type, now, data or None))
        self.arrived.set()

    def taken(self, count: int) -> None:
        """The first ``count`` pending events were written."""
        del self.pending[:count]
        if not self.pending:
            self.arrived.clear()
