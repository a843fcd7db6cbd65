"""Guarded writes that keep trying until they are recorded, or the run is gone.

Every status write is a compare-and-set on the object's resourceVersion. On a
conflict the object is read again and the change recomputed from what is stored,
so a terminal state recorded by anyone is never overwritten. Transient failures
(API server down, 429, 5xx) and permission errors back off and retry, loudly, until
an optional deadline; nothing is dropped silently and nothing is written twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable

from agentrun.api import models
from agentrun.runtime import metrics, store

logger = logging.getLogger(__name__)

StatusChange = Callable[[store.RunObject], models.AgentRunStatus | None]
"""Given the stored run, the status to write, or ``None`` when there is nothing to do."""


@dataclasses.dataclass(frozen=True)
class Written:
    """The run as stored after a guarded write, and whether this write changed it."""

    run: store.RunObject
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


class Recorder:
    """Performs guarded writes for the runtime."""

    def __init__(self, run_store: store.RunStore, run_metrics: metrics.Metrics) -> None:
        self._store = run_store
        self._metrics = run_metrics

    def _failed(self, error: store.StoreError) -> None:
        self._metrics.status_write_failures.labels(cause=type(error).__name__).inc()

    async def _retrying(
        self,
        run: store.RunObject,
        what: str,
        attempt: Callable[[store.RunObject], Awaitable[store.RunObject | None]],
        deadline: float | None,
    ) -> store.RunObject | None:
        backoff = Backoff()
        while True:
            try:
                return await attempt(run)
            except store.NotFound:
                return None
            except store.Conflict:
                try:
                    run = await self._store.get(run.ref)
                except store.NotFound:
                    return None
                except (store.Unavailable, store.Forbidden) as error:
                    self._failed(error)
                    logger.warning("AgentRun %s: could not re-read it to %s, will retry: %s", run.ref, what, error)
                    if not await backoff.sleep(deadline):
                        break
                continue
            except store.Rejected as error:
                # The same request would be refused again: report it and stop.
                self._failed(error)
                logger.error("AgentRun %s: could not %s, the API server rejected it: %s", run.ref, what, error)
                return None
            except (store.Unavailable, store.Forbidden) as error:
                self._failed(error)
                level = logging.ERROR if isinstance(error, (store.Forbidden, store.Rejected)) else logging.WARNING
                logger.log(level, "AgentRun %s: could not %s, will retry: %s", run.ref, what, error)
                if not await backoff.sleep(deadline):
                    break
        logger.error("AgentRun %s: gave up trying to %s: deadline reached", run.ref, what)
        return None

    async def write_status(
        self,
        run: store.RunObject,
        change: StatusChange,
        *,
        what: str,
        deadline: float | None = None,
        fallback: StatusChange | None = None,
    ) -> Written | None:
        """Write ``change(stored run)`` until it is recorded; ``None`` if the run is gone or out of time.

        When the change declines (returns ``None``) nothing is written and ``changed`` is false.
        If the API server rejects the status as invalid, ``fallback`` (a smaller status) is
        written instead, so that a run never stays Running because its result was unstorable.
        """
        changed = False
        current_change = change

        async def attempt(current: store.RunObject) -> store.RunObject | None:
            nonlocal changed, current_change
            status = current_change(current)
            changed = status is not None
            if status is None:
                return current
            try:
                return await self._store.write_status(current, status)
            except store.Rejected as error:
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
        self, run: store.RunObject, present: bool, *, deadline: float | None = None
    ) -> store.RunObject | None:
        """Make our finalizer present or absent; ``None`` if the object is gone or out of time."""

        async def attempt(current: store.RunObject) -> store.RunObject | None:
            if current.has_finalizer == present:
                return current
            if present and (current.deleting or current.status.phase.terminal):
                return current  # never hold a run that is going away or already finished
            return await self._store.set_finalizer(current, present)

        what = "add the finalizer" if present else "release the finalizer"
        return await self._retrying(run, what, attempt, deadline)
