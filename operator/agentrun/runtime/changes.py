"""The status changes the operator writes, each re-decided on the stored object.

Every function takes the run as the API server stores it now (the writer re-reads
it after a conflict or a write whose outcome is unknown) and returns the status to
write, or ``None`` when the change no longer applies. That is what makes a stale
watch copy harmless: the precondition is checked again against the current object,
and a terminal status is final.

The writer receives these functions bound with :func:`functools.partial`.
"""

from __future__ import annotations

import datetime

from agentrun.api import models
from agentrun.runtime import ports, transitions


def admit(
    current: ports.RunObject,
    *,
    runner: models.RunnerStatus,
    now: datetime.datetime,
    ring_size: int,
    agent: models.AgentRecord | None = None,
    thread_turn: int | None = None,
    pod_name: str | None = None,
) -> models.AgentRunStatus | None:
    """``Running`` with the next attempt recorded, if the run still waits for admission."""
    if current.deleting or current.cancel_requested or not current.phase_readable:
        return None
    if current.status.phase is not models.Phase.PENDING:
        return None  # admitted (perhaps by this very write, its reply lost), finished, or taken
    retry_at = current.status.next_attempt_time
    if retry_at is not None and retry_at > now:
        return None  # still backing off
    return transitions.admitted(
        current.status,
        runner=runner,
        agent=agent,
        thread_turn=thread_turn,
        pod_name=pod_name,
        generation=current.generation,
        now=now,
        ring_size=ring_size,
    )


def queue(
    current: ports.RunObject,
    *,
    now: datetime.datetime,
    reason: models.Reason = models.Reason.QUEUED,
    message: str = transitions.QUEUED_MESSAGE,
) -> models.AgentRunStatus | None:
    """``Pending`` with why the run waits (a slot, its thread), once."""
    if current.deleting or not current.phase_readable or current.status.phase is not models.Phase.PENDING:
        return None
    if current.status.reason == reason.value and current.status.message == message:
        return None
    return transitions.queued(current.status, generation=current.generation, now=now, reason=reason, message=message)


def progress(
    current: ports.RunObject,
    *,
    events: list[transitions.PendingEvent],
    instance: str,
    attempt: int,
    now: datetime.datetime,
    ring_size: int,
) -> models.AgentRunStatus | None:
    """Coalesced progress, while this instance's attempt is the running one."""
    if current.status.phase is not models.Phase.RUNNING:
        return None
    if not transitions.driven_by(current.status, instance=instance, attempt=attempt):
        return None
    return transitions.progressed(current.status, events, now=now, ring_size=ring_size)


def end(
    current: ports.RunObject,
    *,
    ending: transitions.Ending,
    events: list[transitions.PendingEvent],
    now: datetime.datetime,
    ring_size: int,
    instance: str | None = None,
    attempt: int | None = None,
    retry_at: datetime.datetime | None = None,
) -> models.AgentRunStatus | None:
    """The terminal status (or, with ``retry_at``, the wait for the next attempt); the first end wins.

    With ``instance`` and ``attempt`` the end applies only while that attempt is the
    running one (an attempt ends itself); without them it ends any unfinished run
    (deletion or cancellation of a run nobody executes).
    """
    if current.status.phase.terminal or not current.phase_readable:
        return None
    if attempt is not None and instance is not None:
        if current.status.phase is not models.Phase.RUNNING:
            return None
        if not transitions.driven_by(current.status, instance=instance, attempt=attempt):
            return None
    if retry_at is not None:
        return transitions.retrying(
            current.status,
            ending,
            at=retry_at,
            events=events,
            generation=current.generation,
            now=now,
            ring_size=ring_size,
        )
    return transitions.ended(
        current.status, ending, events=events, generation=current.generation, now=now, ring_size=ring_size
    )


def fail_orphan(
    current: ports.RunObject,
    *,
    seen: models.AgentRunStatus,
    ending: transitions.Ending,
    now: datetime.datetime,
    ring_size: int,
    retry_at: datetime.datetime | None = None,
) -> models.AgentRunStatus | None:
    """Fail a run whose owner is gone (or retry it), if nothing has moved since it was judged orphaned.

    ``seen`` is the status the judgement was made on: if another attempt has started
    since, or another instance has taken the run over, it is no longer an orphan.
    """
    status = current.status
    if status.phase is not models.Phase.RUNNING or not current.phase_readable:
        return None
    if status.runner != seen.runner or status.last_attempt != seen.last_attempt:
        return None
    if retry_at is not None:
        return transitions.retrying(
            status, ending, at=retry_at, generation=current.generation, now=now, ring_size=ring_size
        )
    return transitions.ended(status, ending, generation=current.generation, now=now, ring_size=ring_size)


def adopt(current: ports.RunObject, *, seen: models.AgentRunStatus, instance: str) -> models.AgentRunStatus | None:
    """Take over a pod-mode attempt whose owner is gone, if nothing has moved since it was judged orphaned.

    As with :func:`fail_orphan`, another owner or a newer attempt since means someone else took it.
    A reply lost after the write applied is recognised on re-read: the run is then already ours.
    """
    status = current.status
    if status.phase is not models.Phase.RUNNING or not current.phase_readable:
        return None
    last = status.last_attempt
    if last is None or last.mode is not models.RunnerMode.POD or last.pod_name is None:
        return None
    if status.runner != seen.runner or status.last_attempt != seen.last_attempt:
        return None
    return transitions.adopted(status, instance=instance)
