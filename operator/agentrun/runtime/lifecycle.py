"""One run's life in this operator: admit, execute, record the end, let go.

The API writes of a run, in order: add the finalizer, write ``Running`` (with
``run_started``, the owner and the first heartbeat), write the terminal status (with
any progress not yet written and the terminal event), release the finalizer. Long
runs add one write per heartbeat interval, which also carries coalesced progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable

from agentrun import settings as settings_module
from agentrun.api import models
from agentrun.layers import errors
from agentrun.runtime import metrics, recorder, runner, store, transitions

logger = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "run cancelled during operator shutdown"
DELETED_MESSAGE = "run cancelled: the AgentRun was deleted while running"
# Secrets hold at most 1 MiB; leave room for the object's own metadata.
MAX_PAYLOAD_BYTES = 1024 * 1024 - 16 * 1024


class StopCause(enum.Enum):
    """Why the operator stopped a run before it finished."""

    DELETED = "deleted"
    SHUTDOWN = "shutdown"

    def ending(self) -> transitions.Ending:
        if self is StopCause.DELETED:
            return transitions.Ending(
                phase=models.Phase.CANCELLED, reason=models.Reason.CANCELLED, message=DELETED_MESSAGE
            )
        return transitions.failure(models.Reason.OPERATOR_SHUTDOWN, SHUTDOWN_MESSAGE)


EventSink = Callable[[store.RunObject, store.EventSeverity, str, str], None]
"""Posts a Kubernetes Event about a run without waiting for it."""


@dataclasses.dataclass
class Deps:
    """What a lifecycle needs from its scheduler."""

    store: store.RunStore
    recorder: recorder.Recorder
    executor: runner.Runner
    settings: settings_module.Settings
    clock: runner.Clock
    on_event: EventSink
    metrics: metrics.Metrics


def ending_change(
    ending: transitions.Ending,
    *,
    clock: runner.Clock,
    ring_size: int,
    events: list[transitions.PendingEvent] | None = None,
    still_applies: Callable[[store.RunObject], bool] | None = None,
) -> recorder.StatusChange:
    """The change that records ``ending``; it declines once the run is terminal (the first end wins)."""

    def change(current: store.RunObject) -> models.AgentRunStatus | None:
        if current.status.phase.terminal or (still_applies is not None and not still_applies(current)):
            return None
        return transitions.ended(
            current.status,
            ending,
            events=events or (),
            generation=current.generation,
            now=clock(),
            ring_size=ring_size,
        )

    return change


def record_finished(run_metrics: metrics.Metrics, status: models.AgentRunStatus) -> None:
    """Count a terminal status this operator has just recorded."""
    duration = None
    if status.start_time and status.completion_time:
        duration = (status.completion_time - status.start_time).total_seconds()
    run_metrics.finished(status.phase, status.reason or "", duration, status.usage)


class RunLifecycle:
    """Drives one run; ``stop()`` ends it early with a recorded cause."""

    def __init__(self, run: store.RunObject, deps: Deps) -> None:
        self.run = run
        self.deps = deps
        self.stop_cause: StopCause | None = None
        self.write_deadline: float | None = None
        """Monotonic time after which writes give up (set by the shutdown drain)."""
        self._work: asyncio.Task[runner.RunOutcome] | None = None
        self._progress = runner.ProgressSink(deps.clock)

    @property
    def ref(self) -> store.RunRef:
        return self.run.ref

    def stop(self, cause: StopCause) -> None:
        """End the run early. The first cause wins; the lifecycle records it and lets go."""
        if self.stop_cause is None:
            self.stop_cause = cause
        if self._work is not None:
            self._work.cancel()

    async def __call__(self) -> None:
        if not await self._admit():
            return
        ending = await self._attempt()
        await self._conclude(ending)

    # --- admission ---------------------------------------------------------------

    async def _admit(self) -> bool:
        deps = self.deps
        held = await deps.recorder.set_finalizer(self.run, True, deadline=self.write_deadline)
        if held is None or not held.has_finalizer:
            return False
        self.run = held
        if self.stop_cause is not None:
            await self._release()  # stopped before it started: leave it Pending for the next instance
            return False
        runner_status = models.RunnerStatus(
            mode=held.spec.runner.mode if held.spec else models.RunnerMode.TASK,
            instance=deps.settings.instance,
        )

        def start(current: store.RunObject) -> models.AgentRunStatus | None:
            if current.deleting or current.status.phase is not models.Phase.PENDING:
                return None  # deleted, finished, or taken by another instance meanwhile
            return transitions.admitted(
                current.status,
                runner=runner_status,
                generation=current.generation,
                now=deps.clock(),
                ring_size=deps.settings.event_ring_size,
            )

        written = await deps.recorder.write_status(held, start, what="admit", deadline=self.write_deadline)
        if written is None:
            return False
        self.run = started = written.run
        if not written.changed:
            if started.status.phase is models.Phase.RUNNING and not started.deleting:
                return False  # another instance runs it; the finalizer is held for that run
            await self._release()
            return False
        deps.metrics.runs_started.inc()
        deps.on_event(started, store.EventSeverity.NORMAL, "Started", f"run started by {deps.settings.instance}")
        return True

    # --- execution ---------------------------------------------------------------

    async def _attempt(self) -> transitions.Ending:
        spec = self.run.spec
        timeout = spec.timeout_seconds if spec else None
        self._work = asyncio.create_task(self.deps.executor.execute(self.run, self._progress))
        if self.stop_cause is not None:
            self._work.cancel()
        writer = asyncio.create_task(self._write_progress())
        try:
            async with asyncio.timeout(timeout):
                outcome = await asyncio.shield(self._work)
        except TimeoutError:
            self._work.cancel()
            return transitions.failure(
                models.Reason.DEADLINE_EXCEEDED, f"run exceeded its deadline of {timeout} seconds"
            )
        except asyncio.CancelledError:
            if self.stop_cause is None or not self._work.cancelled():
                self._work.cancel()
                raise  # this lifecycle itself is being cancelled, not just its work
            return self.stop_cause.ending()
        except errors.RunFailure as failure:
            return transitions.failure(failure.reason, failure.message)
        except Exception:  # a bug in a layer or in pydantic-ai must still end the run, not leave it Running
            logger.exception("AgentRun %s failed with an unexpected error", self.ref)
            return transitions.failure(
                models.Reason.INTERNAL_ERROR, "the operator hit an unexpected error; see the operator log"
            )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return await self._success(outcome)

    async def _write_progress(self) -> None:
        """Coalesce progress into few writes, and renew the heartbeat while the run lasts."""
        deps = self.deps
        settings = deps.settings
        last_write = time.monotonic()
        while True:
            interval = (
                settings.progress_interval_seconds if self._progress.pending else settings.heartbeat_interval_seconds
            )
            wait = last_write + interval - time.monotonic()
            if wait > 0:
                if self._progress.pending:
                    await asyncio.sleep(wait)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._progress.arrived.wait(), wait)
                continue
            events = list(self._progress.pending)
            written = await deps.recorder.write_status(self.run, self._progressed(events), what="write progress")
            last_write = time.monotonic()
            if written is None or not written.changed:
                return
            self.run = written.run
            self._progress.taken(len(events))

    def _progressed(self, events: list[transitions.PendingEvent]) -> recorder.StatusChange:
        def change(current: store.RunObject) -> models.AgentRunStatus | None:
            if current.status.phase is not models.Phase.RUNNING:
                return None
            return transitions.progressed(
                current.status, events, now=self.deps.clock(), ring_size=self.deps.settings.event_ring_size
            )

        return change

    async def _success(self, outcome: runner.RunOutcome) -> transitions.Ending:
        """The Succeeded ending, with output or snapshot moved out of the status when too large."""
        budget = self.deps.settings.status_budget_bytes
        output_json = json.dumps(outcome.output, separators=(",", ":"))
        snapshot_json = json.dumps(outcome.session_snapshot.to_wire(), separators=(",", ":"))
        for payload, what in ((output_json, "output"), (snapshot_json, "session snapshot")):
            if len(payload.encode()) > MAX_PAYLOAD_BYTES:
                return transitions.failure(
                    models.Reason.OUTPUT_TOO_LARGE,
                    f"the run's {what} is {len(payload.encode())} bytes; at most {MAX_PAYLOAD_BYTES} can be stored",
                )
        # The output appears twice (status.output and the run_succeeded event), the snapshot once.
        inline_output = 2 * len(output_json.encode()) <= budget // 2
        inline_snapshot = len(snapshot_json.encode()) <= budget // 2
        output_ref = snapshot_ref = None
        try:
            if not inline_output:
                output_ref = await self._offload("output", output_json)
            if not inline_snapshot:
                snapshot_ref = await self._offload("session", snapshot_json)
        except store.StoreError as error:
            return transitions.failure(models.Reason.OUTPUT_TOO_LARGE, f"the run's result could not be stored: {error}")
        return transitions.Ending(
            phase=models.Phase.SUCCEEDED,
            reason=models.Reason.SUCCEEDED,
            output=outcome.output if inline_output else None,
            output_ref=output_ref,
            usage=outcome.usage,
            session_snapshot=outcome.session_snapshot if inline_snapshot else None,
            session_snapshot_ref=snapshot_ref,
        )

    async def _offload(self, purpose: str, payload: str) -> models.ContentRef:
        backoff = recorder.Backoff()
        while True:
            try:
                return await self.deps.store.store_payload(self.run, purpose, payload)
            except (store.Unavailable, store.Forbidden) as error:
                logger.warning("could not store %s of AgentRun %s, will retry: %s", purpose, self.ref, error)
                if not await backoff.sleep(self.write_deadline):
                    raise

    # --- the end -------------------------------------------------------------------

    async def _conclude(self, ending: transitions.Ending) -> None:
        deps = self.deps
        end = ending_change(
            ending, clock=deps.clock, ring_size=deps.settings.event_ring_size, events=list(self._progress.pending)
        )
        unstorable = ending_change(
            transitions.failure(
                models.Reason.INTERNAL_ERROR,
                f"the run ended ({ending.reason.value}) but the API server rejected its status; see the operator log",
            ),
            clock=deps.clock,
            ring_size=deps.settings.event_ring_size,
        )
        written = await deps.recorder.write_status(
            self.run, end, what="record the end", deadline=self.write_deadline, fallback=unstorable
        )
        if written is None:
            logger.error("AgentRun %s: final status %s could not be recorded", self.ref, ending.reason.value)
            return
        self.run = written.run
        if written.changed:
            recorded = written.run.status  # the ending, or the minimal fallback
            record_finished(deps.metrics, recorded)
            succeeded = recorded.phase is models.Phase.SUCCEEDED
            severity = store.EventSeverity.NORMAL if succeeded else store.EventSeverity.WARNING
            deps.on_event(written.run, severity, recorded.phase.value, recorded.message or "run succeeded")
        await self._release()

    async def _release(self) -> None:
        released = await self.deps.recorder.set_finalizer(self.run, False, deadline=self.write_deadline)
        if released is not None:
            self.run = released
