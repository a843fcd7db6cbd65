"""Driving one attempt of a run: execute it under its deadline, write progress, end it.

The attempt is already recorded in the run's status (see
:mod:`agentrun.runtime.admission`) when it starts here. Progress is coalesced
into at most one write per interval; the owner's liveness is its Lease, not a write.
The run's deadline counts from its ``startTime``; only that deadline yields
``DeadlineExceeded``. ``stop()`` ends the
attempt early with a recorded cause. Whatever happens, the attempt ends with an
:class:`~agentrun.runtime.transitions.Ending`: a bug in a layer or in the agent
library becomes ``InternalError``, never a run left ``Running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time

from agentrun.api import models
from agentrun.layers import compositor, errors
from agentrun.runtime import changes, decisions, ending, ports, progress, services, transitions

logger = logging.getLogger(__name__)

POD_STOP_SECONDS = 45.0
"""How long a stopped Pod may take to flush and end before the operator stops waiting for it."""


def remaining_seconds(run: ports.RunObject, default: float, now: datetime.datetime) -> float:
    """Time left before the run's deadline, counted from its ``startTime`` across attempts."""
    start = run.status.start_time or now
    return decisions.deadline_seconds(run, default) - (now - start).total_seconds()


class AttemptDriver:
    """Executes one recorded attempt of a run in this process."""

    def __init__(self, svc: services.Services, run: ports.RunObject, number: int) -> None:
        self.svc = svc
        self.run = run
        self.number = number
        self.stop_cause: decisions.StopCause | None = None
        self.write_deadline: float | None = None
        """Monotonic time after which writes give up (set by the shutdown drain)."""
        self.sink = progress.ProgressSink(svc.clock)
        self._work: asyncio.Task[compositor.CompositionResult] | None = None

    @property
    def ref(self) -> ports.RunRef:
        return self.run.ref

    @property
    def in_pod(self) -> bool:
        """The attempt runs in its own Pod, which outlives this process."""
        return self.run.status.mode is models.RunnerMode.POD

    def stop(self, cause: decisions.StopCause) -> None:
        """End the attempt early. The first cause wins; the driver records it.

        A Pod is asked to stop (SIGTERM, so the runner flushes what it has) and the work ends
        once the Pod has; it is cancelled outright if that takes longer than ``POD_STOP_SECONDS``.
        """
        if self.stop_cause is None:
            self.stop_cause = cause
        self.sink.stop_requested.set()
        if self._work is None or self._work.done():
            return
        if self.in_pod:
            asyncio.get_running_loop().call_later(POD_STOP_SECONDS, self._work.cancel)
        else:
            self._work.cancel()

    async def execute(self) -> transitions.Ending:
        """Run the attempt to its ending (never raises for the run's own failures)."""
        if self.stop_cause is not None:
            return self.stop_cause.ending()
        svc = self.svc
        budget = remaining_seconds(self.run, svc.settings.default_timeout_seconds, svc.clock())
        timeout = decisions.deadline_seconds(self.run, svc.settings.default_timeout_seconds)
        self._work = asyncio.create_task(svc.runner.execute(self.run, self.sink), name=f"attempt {self.ref}")
        writer_task = asyncio.create_task(self._write_progress(), name=f"progress {self.ref}")
        try:
            return await self._outcome(budget, limit=timeout)
        finally:
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task

    async def _outcome(self, budget: float, *, limit: float) -> transitions.Ending:
        assert self._work is not None
        deadline_hit = False
        try:
            async with asyncio.timeout(max(0.0, budget)) as scope:
                try:
                    result = await asyncio.shield(self._work)
                finally:
                    deadline_hit = scope.expired()
        except TimeoutError:
            if deadline_hit:
                self.sink.stop_requested.set()  # a Pod is deleted, not left running to its own deadline
                self._work.cancel()
                return transitions.failure(
                    models.Reason.DEADLINE_EXCEEDED, f"run exceeded its deadline of {limit:g} seconds"
                )
            return self._unexpected()  # a TimeoutError that escaped the agent is not our deadline
        except asyncio.CancelledError:
            if self.stop_cause is None or not self._work.cancelled():
                self._work.cancel()
                raise  # this driver itself is being cancelled, not just its work
            return self.stop_cause.ending()
        except errors.RunFailure as failure:
            return transitions.failure(
                failure.reason, failure.message, status_code=failure.status_code, usage=failure.usage
            )
        except Exception:  # a bug in a layer or in pydantic-ai must still end the run, not leave it Running
            return self._unexpected()
        return await ending.success(
            self.svc, self.run, result, deadline=time.monotonic() + ending.OFFLOAD_TIMEOUT_SECONDS
        )

    def _unexpected(self) -> transitions.Ending:
        logger.exception("AgentRun %s failed with an unexpected error", self.ref)
        return transitions.failure(
            models.Reason.INTERNAL_ERROR, "the operator hit an unexpected error; see the operator log"
        )

    async def _write_progress(self) -> None:
        """Coalesce progress into at most one write per interval; an attempt without progress writes nothing."""
        interval = self.svc.settings.progress_interval_seconds
        last_write = time.monotonic()
        while True:
            await self.sink.arrived.wait()
            wait = last_write + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            events = list(self.sink.pending)
            change = functools.partial(
                changes.progress,
                events=events,
                instance=self.svc.instance,
                attempt=self.number,
                now=self.svc.clock(),
                ring_size=self.svc.ring_size,
            )
            written = await self.svc.writer.write_status(self.run, change, what="write progress")
            last_write = time.monotonic()
            if written is None or not written.changed:
                return
            self.run = written.run
            self.sink.taken(len(events))
