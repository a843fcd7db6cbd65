"""Deleting finished runs whose time to live has passed, without starving live work.

A finished run costs one small heap entry until it expires: the run object itself
is not kept. Expired runs are deleted by a few workers at a time (a uid
precondition guards against deleting a namesake), so that thousands expiring
together never take the connection pool or the event loop from runs that execute.
The expiry time is computed from ``completionTime`` in the status, so it survives
operator restarts: finished runs are not watched (see :mod:`agentrun.kube.watch`), so
a new leader lists them once, page by page, and again every hour, keeping only the
expiry time of those that have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import logging

from agentrun.runtime import decisions, ports, services

logger = logging.getLogger(__name__)

CONCURRENT_DELETIONS = 4
"""Deletions in flight at once."""
SWEEP_INTERVAL_SECONDS = 3600.0
"""How often finished runs are listed again (runs this leader finishes are scheduled as they finish)."""


class Expiry:
    """The finished runs waiting to be deleted, soonest first."""

    def __init__(self, svc: services.Services) -> None:
        self.svc = svc
        self._due: dict[ports.RunRef, datetime.datetime] = {}
        self._heap: list[tuple[datetime.datetime, ports.RunRef]] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, ref: ports.RunRef, at: datetime.datetime) -> None:
        """Delete ``ref`` at ``at`` (again scheduling the same run only moves it)."""
        if self._due.get(ref) == at:
            return
        self._due[ref] = at
        heapq.heappush(self._heap, (at, ref))
        self._changed.set()

    def forget(self, ref: ports.RunRef) -> None:
        self._due.pop(ref, None)

    async def sweep(self) -> int:
        """Schedule every finished run that has a time to live; how many were found."""
        seconds = self.svc.settings.default_ttl_seconds_after_finished
        default_ttl = None if seconds is None else datetime.timedelta(seconds=seconds)
        found = 0
        async for run in self.svc.api.finished_runs():
            at = decisions.expires_at(run, default_ttl)
            if at is not None:
                self.schedule(run.ref, at)
                found += 1
        return found

    async def sweep_periodically(self) -> None:
        """:meth:`sweep` now and every hour, until cancelled; a failed listing is retried sooner."""
        while True:
            try:
                found = await self.sweep()
                logger.info("%d finished runs with a time to live are scheduled for deletion", found)
                await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            except ports.ApiError as error:
                logger.warning("could not list finished runs for their expiry, will retry: %s", error)
                await asyncio.sleep(30)

    async def run(self) -> None:
        """Delete runs as they fall due, a few at a time, until cancelled."""
        slots = asyncio.Semaphore(CONCURRENT_DELETIONS)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                ref = await self._next_due()
                await slots.acquire()
                task = asyncio.create_task(self._delete(ref, slots), name=f"expire AgentRun {ref}")
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _next_due(self) -> ports.RunRef:
        while True:
            while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # moved or forgotten since it was pushed
            self._changed.clear()
            if self._heap:
                at, ref = self._heap[0]
                wait = (at - self.svc.clock()).total_seconds()
                if wait <= 0:
                    heapq.heappop(self._heap)
                    del self._due[ref]
                    return ref
            else:
                wait = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _delete(self, ref: ports.RunRef, slots: asyncio.Semaphore) -> None:
        try:
            await self.svc.api.delete_run(ref)
            self.svc.metrics.ttl_deletions.inc()
            logger.info("AgentRun %s: deleted, its time to live after finishing has passed", ref)
        except ports.NotFound:
            pass  # already gone, or a namesake with another uid now holds the name
        except ports.ApiError as error:
            logger.warning("AgentRun %s: could not delete the expired run, will retry: %s", ref, error)
            self.schedule(ref, self.svc.clock() + datetime.timedelta(seconds=30))
        finally:
            slots.release()
