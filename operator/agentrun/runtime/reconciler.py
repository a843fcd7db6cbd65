"""The run core: a work queue keyed by namespace/name/uid and the loop that drives it.

Every notification about a run (from the watch, from this instance's own writes, or
from the periodic resync) lands on the run's key. A key is worked on by one task at
a time: when a notification arrives while its task is busy, the key is marked dirty
and decided again once the task is done, from the newest object. The decision
itself is :func:`agentrun.runtime.decisions.decide`; this module carries actions out
and keeps the per-key state: the action in flight, the attempt executing, an ending
that could not be recorded yet.

Runs this instance owns are read again periodically, so a run this instance owns is
never forgotten; foreign ``Running`` runs are judged again on each resync, which is
how orphans of a crashed instance are found.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

from agentrun.api import models
from agentrun.runtime import (
    admission,
    attempts,
    changes,
    decisions,
    ending,
    expiry,
    ports,
    recovery,
    services,
    threads,
    transitions,
)

logger = logging.getLogger(__name__)

RELEASED_MEMORY = 10_000
"""At most this many released runs are remembered until the watch reports them gone (see ``forget``)."""


@dataclasses.dataclass
class Unrecorded:
    """An ending this instance decided but could not write yet (retried by the resync)."""

    ending: transitions.Ending
    attempt: int | None
    events: list[transitions.PendingEvent]


@dataclasses.dataclass
class Entry:
    """What the reconciler keeps for one run key."""

    run: ports.RunObject
    task: asyncio.Task[Any] | None = None
    driver: attempts.AttemptDriver | None = None
    dirty: bool = False
    unrecorded: Unrecorded | None = None
    ignored: bool = False
    timer: asyncio.TimerHandle | None = None
    """A wake-up to decide again (the end of a retry's backoff)."""

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class Reconciler:
    """Admits, executes, cancels, recovers and releases the runs this instance watches."""

    def __init__(self, svc: services.Services) -> None:
        self.svc = svc
        self._entries: dict[ports.RunRef, Entry] = {}
        self._line = admission.Line(svc.settings.max_concurrent_runs)
        self._released: collections.OrderedDict[ports.RunRef, None] = collections.OrderedDict()
        self._recovered = False
        self._draining = False
        self._closed = False
        self.expiry = expiry.Expiry(svc)
        self._thread_waiters: dict[tuple[str, str], set[ports.RunRef]] = {}
        svc.metrics.active_runs.set_function(lambda: self._line.running)
        svc.metrics.queued_runs.set_function(lambda: self._line.waiting)

    # --- what the wiring calls -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once startup recovery is done and runs are being admitted."""
        return self._recovered and not self._draining

    @property
    def active_count(self) -> int:
        return self._line.running

    @property
    def queued_count(self) -> int:
        return self._line.waiting

    @property
    def tracked_count(self) -> int:
        """Runs held in memory: waiting, executing, foreign Running, or still to be let go."""
        return len(self._entries)

    def start(self) -> None:
        """Start the background work that is not driven by notifications (expiry of finished runs)."""
        self.svc.supervisor.keep_running(self.expiry.run, what="expiry of finished runs")
        self.svc.supervisor.keep_running(self.expiry.sweep_periodically, what="listing of finished runs to expire")

    def observe(self, run: ports.RunObject) -> None:
        """A newer copy of ``run`` is known. Idempotent; never blocks."""
        if self._closed:
            return  # this instance has stopped leading: another one decides now
        if run.ref in self._released:
            return  # finished and let go by this instance; the watch may lag behind us
        entry = self._entries.get(run.ref)
        if entry is None:
            entry = Entry(run)
            self._entries[run.ref] = entry
        else:
            entry.run = run
        self._reconcile(entry)

    def forget(self, ref: ports.RunRef) -> None:
        """The object is gone from the API server."""
        self._line.leave(ref)
        if ref in self._released:
            # A run this instance let go has left the watch (labelled finished), and with it the
            # stale copies the memory guards against; its expiry stays scheduled.
            del self._released[ref]
        else:
            self.expiry.forget(ref)
        entry = self._entries.get(ref)
        if entry is not None and not entry.busy:
            self._drop(entry)

    def listed(self, namespace: str | None, present: set[ports.RunRef]) -> None:
        """A fresh list of ``namespace`` (``None``: every namespace) found exactly ``present``.

        Runs this instance holds that the list did not return were deleted or finished
        with while the watch was interrupted: they are forgotten.
        """
        for ref in [ref for ref in self._entries if namespace in (None, ref.namespace) and ref not in present]:
            self.forget(ref)

    async def recover(self) -> int:
        """Fail the runs left Running by an instance that is gone; then start admitting.

        Returns how many orphans were failed. Finished runs are only read, never written.
        """
        for run in await self.svc.api.list_running():
            self.observe(run)
        chores = [entry.task for entry in self._entries.values() if entry.task is not None and entry.driver is None]
        results = await asyncio.gather(*chores, return_exceptions=True) if chores else []
        self._recovered = True
        self._pump()
        for entry in list(self._entries.values()):
            if not entry.busy:
                self._reconcile(entry)
        return sum(1 for result in results if isinstance(result, recovery.Orphaned))

    async def resync(self) -> None:
        """Read again the runs this instance owns; judge foreign Running runs again; retry lost ends."""
        for ref, entry in list(self._entries.items()):
            if entry.busy:
                continue
            if entry.unrecorded is not None:
                self._start(entry, self._record_unrecorded(entry), what="record the end")
                continue
            if self._owned(entry.run):
                try:
                    current = await self.svc.api.get(ref)
                except ports.NotFound:
                    self.forget(ref)
                    continue
                if current.ref.uid != ref.uid:
                    self.forget(ref)
                    continue
                entry.run = current
            self._reconcile(entry)

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
        self._line.clear_waiting()
        executing = [entry for entry in self._entries.values() if entry.driver is not None]
        for entry in executing:
            assert entry.driver is not None
            entry.driver.write_deadline = deadline
        logger.info("draining %d active runs, grace %.1fs", len(executing), grace)
        self._detach_pods(executing)
        await self._wait_for(executing, stop_at)
        self._detach_pods(executing)
        for entry in executing:
            if entry.driver is not None:
                entry.driver.stop(decisions.StopCause.SHUTDOWN)
        await self._wait_for(executing, deadline)
        for entry in executing:
            if entry.busy:
                logger.error("AgentRun %s: final status not recorded before the shutdown deadline", entry.run.ref)
                assert entry.task is not None
                entry.task.cancel()

    def _detach_pods(self, entries: list[Entry]) -> None:
        """Stop following runs that execute in Pods, without a write: their Pods keep running.

        The next operator instance adopts them (see ``decisions.Verb.ADOPT``).
        """
        for entry in entries:
            if entry.driver is not None and entry.driver.in_pod and entry.task is not None:
                entry.task.cancel()

    async def settle(self) -> None:
        """Wait until no action is in flight (tests use it before asserting)."""
        await self.svc.supervisor.settle()

    async def close(self) -> None:
        """Cancel whatever is left (after a drain, and in tests); decide nothing more."""
        self._closed = True
        await self.svc.supervisor.close()

    # --- deciding -------------------------------------------------------------------------

    def _observed(self, entry: Entry) -> decisions.Observed:
        settings = self.svc.settings
        default_ttl = settings.default_ttl_seconds_after_finished
        return decisions.Observed(
            instance=self.svc.instance,
            executing=entry.driver is not None,
            accepting=self._recovered and not self._draining,
            draining=self._draining,
            slot_free=self._line.slot_free,
            default_ttl=None if default_ttl is None else datetime.timedelta(seconds=default_ttl),
        )

    def _reconcile(self, entry: Entry) -> None:
        if entry.busy and entry.driver is None:
            entry.dirty = True  # decided again from the newest copy when the action in flight is done
            return
        if entry.unrecorded is not None and not self._draining:
            # This instance knows how the attempt ended: that comes before any judgement of the stored copy
            # (which still says Running, owned by us, executed by nobody: an orphan, were it not for this).
            self._start(entry, self._record_unrecorded(entry), what="record the end")
            return
        run = entry.run
        action = decisions.decide(run, self._observed(entry), self.svc.clock())
        match action.verb:
            case decisions.Verb.WAIT if action.at is not None and run.status.phase.terminal:
                self.expiry.schedule(run.ref, action.at)
                self._settle_idle(entry)
            case decisions.Verb.WAIT if action.at is not None:
                self._wake_at(entry, action.at)
            case decisions.Verb.WAIT:
                self._settle_idle(entry)
            case decisions.Verb.EXPIRE:
                self.expiry.schedule(run.ref, self.svc.clock())
                self._settle_idle(entry)
            case decisions.Verb.IGNORE:
                if not entry.ignored:
                    entry.ignored = True
                    logger.warning(
                        "AgentRun %s: its status has fields this operator version cannot read (%s); leaving it alone",
                        run.ref,
                        ", ".join(run.status_problems),
                    )
            case decisions.Verb.QUEUE:
                self._line.wait(run.ref)
                if self._recovered and run.status.reason != models.Reason.QUEUED.value:
                    self._start(entry, admission.mark_queued(self.svc, run), what="mark the run queued")
            case decisions.Verb.ADMIT:
                self._line.take(run.ref)
                entry.driver = attempts.AttemptDriver(self.svc, run, len(run.status.attempts) + 1)
                self._start(entry, self._attempt(entry), what="run the attempt")
            case decisions.Verb.STOP:
                assert entry.driver is not None
                assert action.cause is not None
                entry.driver.stop(action.cause)
            case decisions.Verb.CANCEL:
                assert action.cause is not None
                self._line.leave(run.ref)
                self._start(
                    entry, ending.conclude(self.svc, run, action.cause.ending()), what="record the cancellation"
                )
            case decisions.Verb.ADOPT:
                self._line.take(run.ref)  # an adopted Pod runs already: it never waits for a slot
                last = run.status.last_attempt
                assert last is not None
                entry.driver = attempts.AttemptDriver(self.svc, run, last.number)
                self._start(entry, self._adopt(entry), what="adopt the run's Pod")
            case decisions.Verb.FAIL_ORPHAN:
                self._start(entry, self._fail_orphan(run), what="fail the orphaned run")
            case decisions.Verb.RELEASE:
                self._start(entry, ending.release(self.svc, run), what="release the run")

    def _settle_idle(self, entry: Entry) -> None:
        """Drop what no longer needs memory: finished runs without our finalizer."""
        run = entry.run
        if entry.driver is None and not entry.busy and run.status.phase.terminal and not run.has_finalizer:
            self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        self._entries.pop(entry.run.ref, None)
        self._line.leave(entry.run.ref)

    def _wake_at(self, entry: Entry, at: datetime.datetime) -> None:
        """Decide about the run again at ``at``."""
        if entry.timer is not None:
            entry.timer.cancel()
        delay = max(0.0, (at - self.svc.clock()).total_seconds())
        entry.timer = asyncio.get_running_loop().call_later(delay, self._wake, entry.run.ref)

    def _wake(self, ref: ports.RunRef) -> None:
        entry = self._entries.get(ref)
        if entry is not None:
            entry.timer = None
            self._reconcile(entry)

    def _owned(self, run: ports.RunObject) -> bool:
        """Runs this instance answers for: recorded as its own, or held but not run by anyone."""
        runner = run.status.runner
        if runner is not None and runner.instance == self.svc.instance:
            return True
        return run.has_finalizer and run.status.phase is not models.Phase.RUNNING

    # --- carrying actions out -------------------------------------------------------------------

    def _start(self, entry: Entry, work: Coroutine[Any, Any, object], *, what: str) -> None:
        task = self.svc.supervisor.spawn(self._keyed(entry, work), what=f"{what}: AgentRun {entry.run.ref}")
        entry.task = task

    async def _keyed(self, entry: Entry, work: Coroutine[Any, Any, object]) -> object:
        """Run one action for the key; then decide again if anything arrived meanwhile."""
        result: object = None
        cancelled = False
        try:
            result = await work
            return result
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if isinstance(result, ports.RunObject):
                entry.run = result
            elif isinstance(result, recovery.Orphaned):
                entry.run = result.run
            entry.task = None
            if entry.driver is not None:
                entry.driver = None
                self._line.done(entry.run.ref)
                self._pump()
            if not cancelled:
                self._after_action(entry)

    def _after_action(self, entry: Entry) -> None:
        run = entry.run
        if run.thread_name is not None and run.status.phase.terminal:
            self._thread_waiters.get((run.ref.namespace, run.thread_name), set()).discard(run.ref)
            self._wake_thread(run.ref.namespace, run.thread_name)
        if run.status.phase.terminal and not run.has_finalizer and entry.unrecorded is None:
            self._remember_released(run.ref)
            self._drop(entry)
            self._schedule_expiry(run)
            return
        if entry.unrecorded is not None:
            entry.dirty = False  # the API server failed the write just now: the next notification or resync retries
            return
        if entry.dirty and not self._draining:
            entry.dirty = False
            self._reconcile(entry)

    async def _attempt(self, entry: Entry) -> ports.RunObject | None:
        driver = entry.driver
        assert driver is not None
        turn = None
        if entry.run.thread_name is not None:
            turn, current = await self._join_thread(entry)
            if turn is None:
                return current
        admitted = await admission.admit(self.svc, entry.run, deadline=driver.write_deadline, thread_turn=turn)
        if admitted is None:
            entry.dirty = True
            return None
        driver.run = admitted.run
        driver.number = admitted.attempt
        return await self._drive(entry, driver)

    async def _adopt(self, entry: Entry) -> ports.RunObject | None:
        """Become the owner of a pod-mode attempt whose owner is gone, then follow its Pod to the end."""
        driver = entry.driver
        assert driver is not None
        run = entry.run
        change = functools.partial(changes.adopt, seen=run.status, instance=self.svc.instance)
        written = await self.svc.writer.write_status(run, change, what="adopt the run", deadline=driver.write_deadline)
        if written is None:
            return None
        ours = transitions.driven_by(written.run.status, instance=self.svc.instance, attempt=driver.number)
        if not ours or written.run.status.phase is not models.Phase.RUNNING:
            entry.dirty = True  # its owner is alive after all, or the run moved on: decide again
            return written.run
        logger.info("AgentRun %s: adopted attempt %d and its Pod", run.ref, driver.number)
        driver.run = written.run
        return await self._drive(entry, driver)

    async def _drive(self, entry: Entry, driver: attempts.AttemptDriver) -> ports.RunObject | None:
        """Execute the attempt, then record how it ended."""
        try:
            end = await driver.execute()
        except asyncio.CancelledError:
            raise
        except Exception:  # a driver bug must still end the run, not leave it Running
            logger.exception("AgentRun %s: the attempt failed unexpectedly", driver.ref)
            end = transitions.failure(
                models.Reason.INTERNAL_ERROR, "the operator hit an unexpected error; see the operator log"
            )
        events = list(driver.sink.pending)
        recorded = await ending.conclude(
            self.svc, driver.run, end, events=events, attempt=driver.number, deadline=driver.write_deadline
        )
        if recorded is None and not self._draining:
            entry.unrecorded = Unrecorded(end, driver.number, events)
        return recorded

    async def _join_thread(self, entry: Entry) -> tuple[int | None, ports.RunObject | None]:
        """Hold the run's thread before it is admitted: the turn it takes, or ``None`` and the run as it stands."""
        run = entry.run
        thread = run.thread_name
        assert thread is not None
        key = (run.ref.namespace, thread)
        waiters = self._thread_waiters.setdefault(key, set())
        others_first = any(
            threads.created_order(self._entries[ref].run) < threads.created_order(run)
            for ref in waiters
            if ref != run.ref and ref in self._entries
        )
        claim = await threads.claim(self.svc, run, others_first=others_first)
        match claim.gate:
            case threads.Gate.CLAIMED:
                waiters.discard(run.ref)
                return threads.taken_turn(claim), run
            case threads.Gate.MISSING:
                waiters.discard(run.ref)
                failure = transitions.failure(models.Reason.INVALID_REQUEST, threads.missing_message(run))
                return None, await ending.conclude(self.svc, run, failure)
            case threads.Gate.REJECT:
                waiters.discard(run.ref)
                assert claim.active is not None
                failure = transitions.failure(models.Reason.INVALID_REQUEST, threads.busy_message(thread, claim.active))
                return None, await ending.conclude(self.svc, run, failure)
        waiters.add(run.ref)
        if claim.interrupts and claim.active is not None:
            self._stop_thread_run(run.ref.namespace, claim.active, decisions.StopCause.INTERRUPTED)
        holder = claim.active or "an earlier run"
        written = await admission.mark_queued(
            self.svc, run, reason=models.Reason.THREAD_BUSY, message=threads.waiting_message(thread, holder)
        )
        return None, written

    def thread_gone(self, namespace: str, name: str) -> None:
        """An AgentThread was deleted: its active run is cancelled, its waiting runs fail."""
        for entry in list(self._entries.values()):
            run = entry.run
            if run.ref.namespace == namespace and run.thread_name == name and entry.driver is not None:
                entry.driver.stop(decisions.StopCause.THREAD_DELETED)
        self._wake_thread(namespace, name)

    def _stop_thread_run(self, namespace: str, name: str, cause: decisions.StopCause) -> None:
        for entry in self._entries.values():
            if entry.run.ref.namespace == namespace and entry.run.ref.name == name and entry.driver is not None:
                entry.driver.stop(cause)

    def _wake_thread(self, namespace: str, thread: str) -> None:
        """The thread may be free: its waiting runs try again, first created first."""
        waiters = self._thread_waiters.get((namespace, thread), set())
        entries = sorted(
            (self._entries[ref] for ref in waiters if ref in self._entries),
            key=lambda entry: threads.created_order(entry.run),
        )
        for entry in entries:
            self._reconcile(entry)

    async def _record_unrecorded(self, entry: Entry) -> ports.RunObject | None:
        pending = entry.unrecorded
        assert pending is not None
        recorded = await ending.conclude(
            self.svc, entry.run, pending.ending, events=pending.events, attempt=pending.attempt
        )
        if recorded is not None:
            entry.unrecorded = None
        return recorded

    async def _fail_orphan(self, run: ports.RunObject) -> recovery.Orphaned | None:
        return await recovery.fail_orphan(self.svc, run)

    def _pump(self) -> None:
        """Admit waiting runs while there is room under the cap."""
        if not self._recovered or self._draining:
            return
        for ref in self._line.next_waiting():
            entry = self._entries.get(ref)
            if entry is None:
                self._line.leave(ref)
            else:
                self._reconcile(entry)

    def _schedule_expiry(self, run: ports.RunObject) -> None:
        """A run this instance let go is not decided again (its stale copies are ignored): expire it here."""
        default_ttl = self.svc.settings.default_ttl_seconds_after_finished
        at = decisions.expires_at(run, None if default_ttl is None else datetime.timedelta(seconds=default_ttl))
        if at is not None:
            self.expiry.schedule(run.ref, at)

    def _remember_released(self, ref: ports.RunRef) -> None:
        self._released[ref] = None
        while len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)

    async def _wait_for(self, entries: list[Entry], until: float) -> None:
        tasks = [entry.task for entry in entries if entry.task is not None and not entry.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()))
