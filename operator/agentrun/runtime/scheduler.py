"""Decide which runs this operator takes, when, and how it lets them go.

The kopf wiring hands every observed AgentRun to :meth:`Scheduler.observe`, which
is level-based and quick: it never waits on the API server, it starts or stops
:class:`~agentrun.runtime.lifecycle.RunLifecycle` tasks. The scheduler owns the
concurrency cap and its queue, deletion of running runs, orphan recovery, and the
shutdown drain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import time
from collections.abc import Coroutine
from typing import Any

from agentrun import settings as settings_module
from agentrun.api import models
from agentrun.runtime import lifecycle, metrics, recorder, runner, store, transitions

logger = logging.getLogger(__name__)


# How many released runs to remember; their stale watch events arrive within moments.
RELEASED_MEMORY = 10_000


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Scheduler:
    """Admits, queues, cancels and recovers the AgentRuns this operator watches."""

    def __init__(
        self,
        *,
        run_store: store.RunStore,
        run_runner: runner.Runner,
        settings: settings_module.Settings,
        run_metrics: metrics.Metrics | None = None,
        clock: runner.Clock = utcnow,
    ) -> None:
        self._store = run_store
        self._settings = settings
        self._clock = clock
        self.metrics = run_metrics or metrics.Metrics()
        self.recorder = recorder.Recorder(run_store, self.metrics)
        self._deps = lifecycle.Deps(
            store=run_store,
            recorder=self.recorder,
            executor=run_runner,
            settings=settings,
            clock=clock,
            on_event=self._post_event,
            metrics=self.metrics,
        )
        self._active: dict[store.RunRef, lifecycle.RunLifecycle] = {}
        self._tasks: dict[store.RunRef, asyncio.Task[None]] = {}
        self._queue: collections.OrderedDict[store.RunRef, store.RunObject] = collections.OrderedDict()
        self._foreign: dict[store.RunRef, store.RunObject] = {}
        """Running runs owned by other instances, watched for an expired heartbeat."""
        self._released: collections.OrderedDict[tuple[store.RunRef, str], None] = collections.OrderedDict()
        """Runs this instance finished and let go; the watch may still deliver their older versions."""
        self._chores: set[asyncio.Task[object]] = set()
        self._recovered = asyncio.Event()
        self._draining = False
        self.metrics.active_runs.set_function(lambda: len(self._active))
        self.metrics.queued_runs.set_function(lambda: len(self._queue))

    # --- what the wiring calls -------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def queued_count(self) -> int:
        return len(self._queue)

    @property
    def ready(self) -> bool:
        """True once startup recovery is done and runs are being admitted."""
        return self._recovered.is_set() and not self._draining

    def observe(self, run: store.RunObject) -> None:
        """React to the current state of one run. Idempotent; never blocks."""
        ref = run.ref
        if run.deleting:
            self._queue.pop(ref, None)
            self._foreign.pop(ref, None)
            self._on_deleting(run)
            return
        if ref in self._active or (ref, ref.uid) in self._released:
            return  # ours: running now, or finished and let go (the watch may lag behind us)
        phase = run.status.phase
        if phase.terminal:
            self._foreign.pop(ref, None)
            if run.has_finalizer and not self._draining:
                self._chore(self._release(run))  # e.g. the instance that finished it died before letting go
            return
        if phase is models.Phase.RUNNING:
            self._on_foreign_running(run)
            return
        if self._draining:
            return  # left Pending for the next operator instance
        if ref not in self._queue:
            self._queue[ref] = run
            self._pump()
            # Queued means waiting for a slot, not waiting for startup recovery to finish.
            if ref in self._queue and self._recovered.is_set() and run.status.reason != models.Reason.QUEUED.value:
                self._chore(self._mark_queued(run))
        else:
            self._queue[ref] = run

    def forget(self, ref: store.RunRef) -> None:
        """The object is gone from the API server."""
        self._queue.pop(ref, None)
        self._foreign.pop(ref, None)

    # --- startup: recover orphans, then admit --------------------------------------------

    async def recover(self) -> int:
        """Fail the runs left Running by an instance that is gone; then start admitting.

        Returns how many orphans were failed. Finished runs are only read, never written.
        """
        orphans = 0
        for run in await self._store.list_running():
            if run.ref in self._active:
                continue
            if self._is_orphan(run):
                orphans += await self._fail_orphan(run)
            else:
                self._foreign[run.ref] = run
        self._recovered.set()
        self._pump()
        return orphans

    async def sweep_orphans(self) -> int:
        """Fail foreign runs whose heartbeat has expired since they were last seen."""
        failed = 0
        for run in list(self._foreign.values()):
            if self._is_orphan(run):
                self._foreign.pop(run.ref, None)
                failed += await self._fail_orphan(run)
        return failed

    def _is_orphan(self, run: store.RunObject) -> bool:
        if run.status.phase is not models.Phase.RUNNING:
            return False
        owner = run.status.runner.instance if run.status.runner else None
        if owner == self._settings.instance and run.ref not in self._active:
            return True  # ours by name but not in memory: this instance restarted
        timeout = datetime.timedelta(seconds=self._settings.heartbeat_timeout_seconds)
        return transitions.heartbeat_expired(run.status, timeout=timeout, now=self._clock())

    def _on_foreign_running(self, run: store.RunObject) -> None:
        if self._recovered.is_set() and self._is_orphan(run):
            self._foreign.pop(run.ref, None)
            self._chore(self._fail_orphan(run))
        else:
            self._foreign[run.ref] = run

    async def _fail_orphan(self, run: store.RunObject) -> int:
        owner = run.status.runner.instance if run.status.runner else "unknown"
        beat = run.status.runner.heartbeat_time if run.status.runner else None
        message = (
            f"the operator instance {owner} that ran this run stopped"
            f" (last heartbeat {beat.isoformat() if beat else 'never'}); the run did not finish"
        )
        fail = lifecycle.ending_change(
            transitions.failure(models.Reason.OPERATOR_RESTARTED, message),
            clock=self._clock,
            ring_size=self._settings.event_ring_size,
            # Its owner may have renewed the heartbeat since we looked: then it is alive after all.
            still_applies=self._is_orphan,
        )
        written = await self.recorder.write_status(run, fail, what="fail the orphaned run")
        if written is None or not written.changed:
            return 0
        logger.warning("AgentRun %s: %s", run.ref, message)
        lifecycle.record_finished(self.metrics, written.run.status)
        self._post_event(written.run, store.EventSeverity.WARNING, "OperatorRestarted", message)
        await self._release(written.run)
        return 1

    # --- admission and the concurrency cap --------------------------------------------

    def _pump(self) -> None:
        """Admit queued runs while there is room under the cap."""
        if not self._recovered.is_set() or self._draining:
            return
        while self._queue and len(self._active) < self._settings.max_concurrent_runs:
            _ref, run = self._queue.popitem(last=False)
            self._start(run)

    def _start(self, run: store.RunObject) -> None:
        run_lifecycle = lifecycle.RunLifecycle(run, self._deps)
        self._active[run.ref] = run_lifecycle
        task = asyncio.create_task(self._drive(run_lifecycle), name=f"agentrun {run.ref}")
        self._tasks[run.ref] = task

    async def _drive(self, run_lifecycle: lifecycle.RunLifecycle) -> None:
        try:
            await run_lifecycle()
        except Exception:  # a lifecycle bug must free its slot, or the cap would shrink for good
            logger.exception("AgentRun %s: lifecycle failed unexpectedly", run_lifecycle.ref)
        finally:
            self._active.pop(run_lifecycle.ref, None)
            self._tasks.pop(run_lifecycle.ref, None)
            if not run_lifecycle.run.has_finalizer:
                self._remember_released(run_lifecycle.ref)
            self._pump()

    def _remember_released(self, ref: store.RunRef) -> None:
        self._released[(ref, ref.uid)] = None
        while len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)

    async def _mark_queued(self, run: store.RunObject) -> None:
        def queue(current: store.RunObject) -> models.AgentRunStatus | None:
            if current.ref not in self._queue or current.status.phase is not models.Phase.PENDING:
                return None  # admitted or gone meanwhile
            if current.status.reason == models.Reason.QUEUED.value:
                return None
            return transitions.queued(current.status, generation=current.generation, now=self._clock())

        written = await self.recorder.write_status(run, queue, what="mark the run queued")
        if written is not None and written.run.ref in self._queue:
            self._queue[written.run.ref] = written.run

    # --- deletion ----------------------------------------------------------------------

    def _on_deleting(self, run: store.RunObject) -> None:
        active = self._active.get(run.ref)
        if active is not None:
            active.stop(lifecycle.StopCause.DELETED)
            return
        if run.has_finalizer and not self._draining:
            # Held by us in an earlier life (or by a crashed instance): record and let go.
            self._chore(self._cancel_unowned(run))

    async def _cancel_unowned(self, run: store.RunObject) -> None:
        ending = lifecycle.StopCause.DELETED.ending()
        cancel = lifecycle.ending_change(ending, clock=self._clock, ring_size=self._settings.event_ring_size)
        written = await self.recorder.write_status(run, cancel, what="record the cancellation")
        if written is not None:
            if written.changed:
                lifecycle.record_finished(self.metrics, written.run.status)
                self._post_event(written.run, store.EventSeverity.WARNING, "Cancelled", ending.message)
            await self._release(written.run)

    async def _release(self, run: store.RunObject) -> None:
        await self.recorder.set_finalizer(run, False)

    # --- shutdown -------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop admitting; let runs finish within ``grace`` seconds; fail the rest.

        Admissions already under way complete first. Every write during the drain is
        bounded by the same deadline; what cannot be recorded in time is logged.
        """
        if self._draining:
            return
        self._draining = True
        deadline = time.monotonic() + grace
        # Keep a slice of the grace for the final status writes of stopped runs.
        stop_at = deadline - min(3.0, grace / 4)
        self._queue.clear()
        for run_lifecycle in self._active.values():
            run_lifecycle.write_deadline = deadline
        logger.info("draining %d active runs, grace %.1fs", len(self._active), grace)

        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()))
        for run_lifecycle in list(self._active.values()):
            run_lifecycle.stop(lifecycle.StopCause.SHUTDOWN)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        for ref, task in list(self._tasks.items()):
            logger.error("AgentRun %s: final status not recorded before the shutdown deadline", ref)
            task.cancel()
        await self._settle([*self._tasks.values(), *self._chores])

    async def _settle(self, tasks: list[asyncio.Task[Any]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def close(self) -> None:
        """Cancel whatever is left (used after a drain, and by tests)."""
        await self._settle([*self._tasks.values(), *self._chores])

    # --- background chores ------------------------------------------------------------------

    def _chore(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _post_event(self, run: store.RunObject, severity: store.EventSeverity, reason: str, message: str) -> None:
        self._chore(self._store.record_event(run, severity, reason, message, self._clock()))

    async def wait_idle(self) -> None:
        """Wait for background chores (tests use it to settle before asserting)."""
        while self._chores:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(list(self._chores))
