"""Guarded writes that keep trying until they are recorded, the run is gone, or time is up.

Every status write is a compare-and-set on the object's resourceVersion. On a
conflict, and after a write whose outcome is unknown (the connection dropped, the
reply timed out), the object is read again and the change recomputed from what is
stored, so a write that was applied is recognised rather than repeated, and a
terminal state recorded by anyone is never overwritten. A namesake with another uid
counts as gone. Transient failures (API server down, 429, 5xx) and permission
errors back off and retry, loudly, until an optional deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable

from agentrun.api import models
from agentrun.runtime import metrics, ports

logger = logging.getLogger(__name__)

StatusChange = Callable[[ports.RunObject], models.AgentRunStatus | None]
"""Given the stored run, the status to write, or ``None`` when there is nothing to do."""


@dataclasses.dataclass(frozen=True)
class Written:
    """The run as stored after a guarded write, and whether this write changed it."""

    run: ports.RunObject
    changed: bool


class Backoff:
    """Exponential backoff with jitter, capped, so retries of many runs do not align."""

    def __init__(self, *, initial: float = 0.2, cap: float = 30.0) -> None:
        self._delay = initial
        self._cap = cap

    async def sleep(self, deadline: float | None) -> bool:
        """Wait before the next try; ``False`` if the deadline would pass first."""
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._cap, self._delay * 2)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = min(delay, remaining)
        await asyncio.sleep(delay)
        return deadline is None or time.monotonic() < deadline


class Writer:
    """Performs the runtime's guarded writes."""

    def __init__(self, api: ports.RunApi, run_metrics: metrics.Metrics) -> None:
        self._api = api
        self._metrics = run_metrics

    async def write_status(
        self,
        run: ports.RunObject,
        change: StatusChange,
        *,
        what: str,
        deadline: float | None = None,
        fallback: StatusChange | None = None,
    ) -> Written | None:
        """Write ``change(stored run)`` until it is recorded; ``None`` if the run is gone or out of time.

        When the change declines (returns ``None``) nothing is written and ``changed`` is
        false. If the API server rejects the status as invalid, ``fallback`` (a smaller
        status) is written instead, so that a run never stays Running because its
        result could not be stored.
        """
        current_change = change
        changed = False

        async def attempt(current: ports.RunObject) -> ports.RunObject:
            nonlocal changed, current_change
            status = current_change(current)
            changed = status is not None
            if status is None:
                return current
            try:
                return await self._api.write_status(current, status)
            except ports.Rejected as error:
                if fallback is None or current_change is fallback:
                    raise
                logger.error(
                    "AgentRun %s: the API server rejected the status, recording a minimal one: %s", current.ref, error
                )
                current_change = fallback
                return await attempt(current)

        stored = await self._retrying(run, what, attempt, deadline)
        return None if stored is None else Written(stored, changed)

    async def set_finalizer(
        self, run: ports.RunObject, present: bool, *, deadline: float | None = None
    ) -> ports.RunObject | None:
        """Make our finalizer present or absent; ``None`` if the object is gone or out of time."""

        async def attempt(current: ports.RunObject) -> ports.RunObject:
            labelled = present or current.labelled_finished or not current.status.phase.terminal
            if current.has_finalizer == present and labelled:
                return current
            if present and (current.deleting or current.status.phase.terminal):
                return current  # never hold a run that is going away or already finished
            updated = await self._api.set_finalizer(current, present)
            if updated is None:
                raise ports.NotFound(f"AgentRun {current.ref} is gone")
            return updated

        what = "add the finalizer" if present else "release the finalizer"
        return await self._retrying(run, what, attempt, deadline)

    async def _retrying(
        self,
        run: ports.RunObject,
        what: str,
        attempt: Callable[[ports.RunObject], Awaitable[ports.RunObject]],
        deadline: float | None,
    ) -> ports.RunObject | None:
        backoff = Backoff()
        current: ports.RunObject | None = run
        while True:
            try:
                if current is None:
                    current = await self._reread(run)
                    if current is None:
                        return None
                return await attempt(current)
            except ports.NotFound:
                return None
            except ports.Conflict:
                current = None  # read again and recompute, at once
                continue
            except ports.Rejected as error:
                # The same request would be refused again: report it and stop.
                self._failed(error)
                logger.error("AgentRun %s: could not %s, the API server rejected it: %s", run.ref, what, error)
                return None
            except (ports.Unavailable, ports.Forbidden) as error:
                self._failed(error)
                # The outcome is unknown: the write may have been applied. Read before trying again.
                current = None
                level = logging.ERROR if isinstance(error, ports.Forbidden) else logging.WARNING
                logger.log(level, "AgentRun %s: could not %s, will retry: %s", run.ref, what, error)
                if not await backoff.sleep(deadline):
                    break
        logger.error("AgentRun %s: gave up trying to %s: deadline reached", run.ref, what)
        return None

    async def _reread(self, run: ports.RunObject) -> ports.RunObject | None:
        """The stored object, or ``None`` when it is gone or replaced by a namesake with another uid."""
        current = await self._api.get(run.ref)
        if run.ref.uid and current.ref.uid != run.ref.uid:
            return None
        return current

    def _failed(self, error: ports.ApiError) -> None:
        self._metrics.status_write_failures.labels(cause=type(error).__name__).inc()
