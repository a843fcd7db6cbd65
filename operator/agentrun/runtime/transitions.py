"""The run's state machine, as pure functions from one status to the next.

Every function takes the current status and ``now`` and returns a new status; none
talks to the API server. The scheduler decides *when* a transition happens; this
module decides *what* the status then says, so the rules can be tested as tables.

Rules: a terminal status never changes again; event ids strictly increase; the
event ring keeps the newest ``ring_size`` events; the ``Succeeded`` condition's
``lastTransitionTime`` moves only when its status value does.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

from agentrun.api import models

Reason = models.Reason
Phase = models.Phase


class TerminalStatusError(RuntimeError):
    """A transition was attempted on a run that already ended."""


@dataclasses.dataclass(frozen=True)
class PendingEvent:
    """An event produced by a run, not yet numbered into the ring."""

    type: str
    time: datetime.datetime
    data: dict[str, Any] | None = None
    runner_seq: int | None = None
    """A pod runner's own number for the event (1, 2, ... per attempt): what an adopting operator resumes after."""


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a run ended, as the terminal transition records it."""

    phase: models.Phase
    reason: models.Reason
    message: str = ""
    output: Any = None
    output_ref: models.ContentRef | None = None
    usage: models.Usage | None = None
    session_snapshot: models.SessionSnapshot | None = None
    session_snapshot_ref: models.ContentRef | None = None
    conversation: models.SessionSnapshot | None = dataclasses.field(default=None, compare=False, repr=False)
    """The whole session the run leaves, even when offloaded: what its thread keeps as history."""
    status_code: int | None = None
    """HTTP status of the model error behind a ModelError ending, when there was one."""

    @property
    def event_type(self) -> models.EventType:
        return {
            Phase.SUCCEEDED: models.EventType.RUN_SUCCEEDED,
            Phase.CANCELLED: models.EventType.RUN_CANCELLED,
        }.get(self.phase, models.EventType.RUN_FAILED)

    def event_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"reason": self.reason.value}
        if self.message:
            data["message"] = self.message
        if self.phase is Phase.SUCCEEDED:
            if self.output_ref is not None:
                data["outputRef"] = self.output_ref.to_wire()
            else:
                data["output"] = self.output
            if self.usage is not None:
                data["usage"] = self.usage.to_wire()
            # The snapshot itself (with the whole conversation) is in status.sessionSnapshot;
            # the event says what state each layer was left in, without copying the history.
            if self.session_snapshot_ref is not None:
                data["sessionSnapshotRef"] = self.session_snapshot_ref.to_wire()
            if self.session_snapshot is not None:
                data["sessionSnapshot"] = {
                    layer.name: layer.lifecycle_state.value for layer in self.session_snapshot.layers
                }
        return data


def failure(
    reason: models.Reason, message: str, *, status_code: int | None = None, usage: models.Usage | None = None
) -> Ending:
    return Ending(phase=Phase.FAILED, reason=reason, message=message, status_code=status_code, usage=usage)


def _attempt_ended(status: models.AgentRunStatus, ending: Ending, now: datetime.datetime) -> list[models.Attempt]:
    attempts = list(status.attempts)
    if attempts and attempts[-1].completion_time is None:
        attempts[-1] = attempts[-1].model_copy(
            update={
                "completion_time": now,
                "reason": ending.reason.value,
                "message": ending.message or None,
                "status_code": ending.status_code,
            }
        )
    return attempts


def _guard(status: models.AgentRunStatus) -> None:
    if status.phase.terminal:
        raise TerminalStatusError(f"run is already {status.phase.value}; its status is final")


def with_events(
    status: models.AgentRunStatus, events: Iterable[PendingEvent], *, ring_size: int
) -> models.AgentRunStatus:
    """Number ``events`` after the last one and keep only the newest ``ring_size``.

    An event already in the ring (same type and time) is not added again: a write can be
    applied by the API server while its answer is lost, and the next write retries it.
    """
    ring = list(status.events)
    recorded = {(event.type, event.time) for event in ring}
    count = status.event_count
    for event in events:
        if (event.type, event.time) in recorded:
            continue
        count += 1
        ring.append(models.RunEvent(id=count, type=event.type, time=event.time, data=event.data))
    return status.model_copy(update={"events": ring[-ring_size:], "event_count": count})


def _succeeded_condition(
    status: models.AgentRunStatus,
    value: models.ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime.datetime,
) -> list[models.Condition]:
    previous = status.condition(models.CONDITION_SUCCEEDED)
    changed = previous is None or previous.status != value
    condition = models.Condition(
        type=models.CONDITION_SUCCEEDED,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )
    others = [c for c in status.conditions if c.type != models.CONDITION_SUCCEEDED]
    return [*others, condition]


QUEUED_MESSAGE = "waiting for a free slot: the operator's concurrent-run limit is reached"


def queued(
    status: models.AgentRunStatus,
    *,
    generation: int | None,
    now: datetime.datetime,
    reason: models.Reason = Reason.QUEUED,
    message: str = QUEUED_MESSAGE,
) -> models.AgentRunStatus:
    """Accepted but waiting: for a free slot under the concurrency cap, or for its thread."""
    _guard(status)
    return status.model_copy(
        update={
            "phase": Phase.PENDING,
            "reason": reason.value,
            "message": message,
            "conditions": _succeeded_condition(
                status, models.ConditionStatus.UNKNOWN, reason.value, message, generation=generation, now=now
            ),
            "observed_generation": generation,
        }
    )


def admitted(
    status: models.AgentRunStatus,
    *,
    runner: models.RunnerStatus,
    generation: int | None,
    now: datetime.datetime,
    ring_size: int,
    agent: models.AgentRecord | None = None,
    thread_turn: int | None = None,
    pod_name: str | None = None,
) -> models.AgentRunStatus:
    """The operator took the run: ``Running``, ``run_started``, its owner and the attempt.

    The Agent a run names is recorded once, with its first attempt; later attempts keep it.

    The attempt is recorded in the same write as the transition, before anything executes:
    a pod-mode attempt names its Pod before the Pod exists.
    """
    _guard(status)
    attempt = models.Attempt(
        number=len(status.attempts) + 1,
        mode=runner.mode,
        instance=runner.instance,
        pod_name=pod_name,
        start_time=now,
    )
    first = not status.attempts
    started = status.model_copy(
        update={
            "phase": Phase.RUNNING,
            "reason": Reason.RUNNING.value,
            "message": "",
            "start_time": status.start_time or now,  # the deadline counts across attempts
            "next_attempt_time": None,
            "agent": status.agent or agent,
            "thread_turn": status.thread_turn or thread_turn,
            "runner": runner,
            "attempts": [*status.attempts, attempt],
            "conditions": _succeeded_condition(
                status, models.ConditionStatus.UNKNOWN, Reason.RUNNING.value, "", generation=generation, now=now
            ),
            "observed_generation": generation,
        }
    )
    event = (
        PendingEvent(models.EventType.RUN_STARTED.value, now)
        if first
        else PendingEvent(models.EventType.ATTEMPT_STARTED.value, now, {"attempt": attempt.number})
    )
    return with_events(started, [event], ring_size=ring_size)


def started_by(status: models.AgentRunStatus, *, instance: str, attempt: int) -> bool:
    """Whether ``status`` records ``attempt`` as started by ``instance``.

    A write whose reply was lost is recognised this way on re-read: it is this
    instance's own work, not another instance's.
    """
    last = status.last_attempt
    return last is not None and last.number == attempt and last.instance == instance


def driven_by(status: models.AgentRunStatus, *, instance: str, attempt: int) -> bool:
    """Whether ``instance`` drives ``attempt`` now: it started the attempt, or adopted it since.

    Ownership is ``status.runner.instance``; the attempt keeps who started it.
    """
    last = status.last_attempt
    owner = status.runner.instance if status.runner else None
    return last is not None and last.number == attempt and owner == instance


def adopted(status: models.AgentRunStatus, *, instance: str) -> models.AgentRunStatus:
    """A pod-mode attempt whose owner is gone is taken over by ``instance``; its Pod keeps running."""
    _guard(status)
    assert status.runner is not None
    runner = status.runner.model_copy(update={"instance": instance})
    return status.model_copy(update={"runner": runner})


def with_runner_cursor(status: models.AgentRunStatus, events: Iterable[PendingEvent]) -> models.AgentRunStatus:
    """The last attempt records the highest runner sequence number among ``events`` (pod mode)."""
    seqs = [event.runner_seq for event in events if event.runner_seq is not None]
    last = status.last_attempt
    if not seqs or last is None:
        return status
    cursor = max(seqs[-1], last.runner_events or 0)
    return status.model_copy(
        update={"attempts": [*status.attempts[:-1], last.model_copy(update={"runner_events": cursor})]}
    )


def progressed(
    status: models.AgentRunStatus,
    events: Iterable[PendingEvent],
    *,
    now: datetime.datetime,
    ring_size: int,
) -> models.AgentRunStatus:
    """Progress events appended, in one write."""
    _guard(status)
    events = list(events)
    return with_events(with_runner_cursor(status, events), events, ring_size=ring_size)


def ended(
    status: models.AgentRunStatus,
    ending: Ending,
    *,
    events: Iterable[PendingEvent] = (),
    generation: int | None,
    now: datetime.datetime,
    ring_size: int,
) -> models.AgentRunStatus:
    """The terminal status: pending progress, then the terminal event, in one write."""
    _guard(status)
    value = models.ConditionStatus.TRUE if ending.phase is Phase.SUCCEEDED else models.ConditionStatus.FALSE
    final = status.model_copy(
        update={
            "attempts": _attempt_ended(status, ending, now),
            "next_attempt_time": None,
            "phase": ending.phase,
            "reason": ending.reason.value,
            "message": ending.message,
            "completion_time": now,
            "start_time": status.start_time or now,
            "output": ending.output,
            "output_ref": ending.output_ref,
            "usage": ending.usage,
            "session_snapshot": ending.session_snapshot,
            "session_snapshot_ref": ending.session_snapshot_ref,
            "conditions": _succeeded_condition(
                status, value, ending.reason.value, ending.message, generation=generation, now=now
            ),
            "observed_generation": generation,
        }
    )
    terminal_event = PendingEvent(ending.event_type.value, now, ending.event_data())
    return with_events(final, [*events, terminal_event], ring_size=ring_size)


def retrying(
    status: models.AgentRunStatus,
    ending: Ending,
    *,
    at: datetime.datetime,
    events: Iterable[PendingEvent] = (),
    generation: int | None,
    now: datetime.datetime,
    ring_size: int,
) -> models.AgentRunStatus:
    """The attempt failed for a reason that is retried: back to ``Pending`` until ``at``."""
    _guard(status)
    message = f"attempt {len(status.attempts)} failed ({ending.reason.value}); the next attempt starts at {_iso(at)}"
    waiting = status.model_copy(
        update={
            "phase": Phase.PENDING,
            "reason": Reason.RETRY_BACKOFF.value,
            "message": message,
            "next_attempt_time": at,
            "attempts": _attempt_ended(status, ending, now),
            "conditions": _succeeded_condition(
                status,
                models.ConditionStatus.UNKNOWN,
                Reason.RETRY_BACKOFF.value,
                message,
                generation=generation,
                now=now,
            ),
            "observed_generation": generation,
        }
    )
    data: dict[str, Any] = {"attempt": len(status.attempts), "reason": ending.reason.value, "retryAt": _iso(at)}
    if ending.message:
        data["message"] = ending.message
    failed = PendingEvent(models.EventType.ATTEMPT_FAILED.value, now, data)
    return with_events(waiting, [*events, failed], ring_size=ring_size)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
