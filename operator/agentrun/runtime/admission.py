"""Admission and the concurrency cap: who runs next, and the writes that take a run.

Runs wait in arrival order while the cap is reached. Taking a run is two guarded
writes: our finalizer, then ``Running`` with the new attempt recorded in the same
write, before anything executes. A write whose reply was lost is recognised on
re-read by the instance and attempt number it carries.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging

from agentrun.api import models
from agentrun.runtime import changes, ending, ports, services, transitions, writer

logger = logging.getLogger(__name__)


class Line:
    """The runs waiting for a slot, first come first served, and the slots in use."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._waiting: collections.OrderedDict[ports.RunRef, None] = collections.OrderedDict()
        self._running: set[ports.RunRef] = set()

    @property
    def slot_free(self) -> bool:
        return len(self._running) < self.cap

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def wait(self, ref: ports.RunRef) -> None:
        self._waiting.setdefault(ref, None)

    def is_waiting(self, ref: ports.RunRef) -> bool:
        return ref in self._waiting

    def leave(self, ref: ports.RunRef) -> None:
        """The run no longer waits (admitted elsewhere, deleted, cancelled)."""
        self._waiting.pop(ref, None)

    def take(self, ref: ports.RunRef) -> None:
        self._waiting.pop(ref, None)
        self._running.add(ref)

    def done(self, ref: ports.RunRef) -> None:
        self._running.discard(ref)

    def next_waiting(self) -> list[ports.RunRef]:
        """The waiting runs that fit under the cap now, oldest first."""
        room = max(0, self.cap - len(self._running))
        return list(self._waiting)[:room]

    def clear_waiting(self) -> None:
        self._waiting.clear()


@dataclasses.dataclass(frozen=True)
class Admitted:
    """A run taken by this instance: its stored object and the attempt to execute."""

    run: ports.RunObject
    attempt: int


async def admit(
    svc: services.Services, run: ports.RunObject, *, deadline: float | None = None, thread_turn: int | None = None
) -> Admitted | None:
    """Take ``run``: finalizer, then ``Running`` with the next attempt. ``None`` if it is not ours to run.

    A run that names an Agent records the Agent as it is now in the same write (on its
    first attempt only), so later edits of the Agent change nothing for it.
    """
    held = await svc.writer.set_finalizer(run, True, deadline=deadline)
    if held is None or not held.has_finalizer:
        return None
    agent = held.status.agent or await agent_record(svc, held)
    spec = held.spec
    effective = models.resolve(spec, agent.spec if agent else None) if spec else None
    mode = effective.mode_or(svc.settings.default_runner_mode) if effective else models.RunnerMode.TASK
    runner = models.RunnerStatus(mode=mode, instance=svc.instance)
    attempt = len(held.status.attempts) + 1
    # A Pod is named in the ledger before it exists: whoever follows the attempt later finds it by this name.
    pod_name = models.runner_pod_name(held.ref.name, held.ref.uid, attempt) if mode is models.RunnerMode.POD else None
    start = functools.partial(
        changes.admit,
        runner=runner,
        agent=agent,
        thread_turn=thread_turn,
        pod_name=pod_name,
        now=svc.clock(),
        ring_size=svc.ring_size,
    )
    written = await svc.writer.write_status(held, start, what="admit", deadline=deadline)
    if written is None:
        return None
    started = written.run
    ours = written.changed or transitions.started_by(started.status, instance=svc.instance, attempt=attempt)
    if ours and started.status.phase is models.Phase.RUNNING:
        svc.metrics.runs_started.inc()
        svc.post_kube_event(started, ports.KubeEventType.NORMAL, "Started", f"run started by {svc.instance}")
        return Admitted(started, attempt)
    if started.status.phase is models.Phase.RUNNING and not started.deleting:
        return None  # another instance runs it; the finalizer is held for that run
    await ending.release(svc, started, deadline=deadline)
    return None


async def agent_record(svc: services.Services, run: ports.RunObject) -> models.AgentRecord | None:
    """The Agent the run names, as it is now; ``None`` when it names none or it cannot be used.

    A missing or unreadable Agent is not an admission error: the attempt then fails with
    a message that says why (see :func:`agentrun.runtime.runner.TaskRunner.execute`).
    """
    spec = run.spec
    if spec is None or spec.agent_ref is None:
        return None
    backoff = writer.Backoff()
    while True:
        try:
            found = await svc.api.get_agent(run.ref.namespace, spec.agent_ref.name)
        except ports.NotFound:
            return None
        except ports.Forbidden as error:
            logger.error("AgentRun %s: %s", run.ref, error)
            return None
        except ports.Unavailable as error:
            logger.warning("AgentRun %s: could not read its Agent, will retry: %s", run.ref, error)
            await backoff.sleep(None)
            continue
        if found.spec is None:
            return None
        return models.AgentRecord(name=found.name, uid=found.uid, generation=found.generation, spec=found.spec)


async def mark_queued(
    svc: services.Services,
    run: ports.RunObject,
    *,
    reason: models.Reason = models.Reason.QUEUED,
    message: str = transitions.QUEUED_MESSAGE,
) -> ports.RunObject | None:
    """Record once why the run waits: for a slot, or for its thread."""
    change = functools.partial(changes.queue, now=svc.clock(), reason=reason, message=message)
    written = await svc.writer.write_status(run, change, what="mark the run waiting")
    return written.run if written is not None else None
