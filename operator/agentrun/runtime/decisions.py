"""The reconciler's decision table: current run + what this instance observes + now -> one action.

:func:`decide` is pure. It never talks to the API server and never reads a clock,
so every row can be tested as a table. The reconciler carries the action out, and
each write re-checks its precondition against the stored object (see
:mod:`agentrun.runtime.changes`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum

from agentrun.api import models
from agentrun.runtime import ports, transitions

SHUTDOWN_MESSAGE = "run cancelled during operator shutdown"
DELETED_MESSAGE = "run cancelled: the AgentRun was deleted while running"
CANCEL_REQUESTED_MESSAGE = "run cancelled by request"
INTERRUPTED_MESSAGE = "run interrupted: a newer run joined its AgentThread (multitaskStrategy interrupt or rollback)"
THREAD_DELETED_MESSAGE = "run cancelled: its AgentThread was deleted"


class StopCause(enum.Enum):
    """Why a run ends before its attempt finishes on its own."""

    DELETED = "deleted"
    REQUESTED = "requested"
    SHUTDOWN = "shutdown"
    INTERRUPTED = "interrupted"
    THREAD_DELETED = "thread-deleted"

    def ending(self) -> transitions.Ending:
        match self:
            case StopCause.DELETED:
                return transitions.Ending(models.Phase.CANCELLED, models.Reason.CANCELLED, DELETED_MESSAGE)
            case StopCause.REQUESTED:
                return transitions.Ending(models.Phase.CANCELLED, models.Reason.CANCELLED, CANCEL_REQUESTED_MESSAGE)
            case StopCause.SHUTDOWN:
                return transitions.failure(models.Reason.OPERATOR_SHUTDOWN, SHUTDOWN_MESSAGE)
            case StopCause.INTERRUPTED:
                return transitions.Ending(models.Phase.CANCELLED, models.Reason.INTERRUPTED, INTERRUPTED_MESSAGE)
            case StopCause.THREAD_DELETED:
                return transitions.Ending(models.Phase.CANCELLED, models.Reason.CANCELLED, THREAD_DELETED_MESSAGE)


class Verb(enum.StrEnum):
    WAIT = "wait"
    """Nothing to do until the run or this instance changes."""
    IGNORE = "ignore"
    """The stored phase is unknown to this version: never act on the run."""
    QUEUE = "queue"
    """Pending and no slot is free: wait in line (recorded as Queued once)."""
    ADMIT = "admit"
    """Pending and a slot is free: record the attempt, then start it."""
    STOP = "stop"
    """This instance executes the run and must stop it for ``cause``."""
    CANCEL = "cancel"
    """Record the run's end for ``cause`` without executing anything, then let go."""
    ADOPT = "adopt"
    """Running in a Pod whose owner is gone: record this instance as the owner, then follow the Pod."""
    FAIL_ORPHAN = "fail-orphan"
    """Running, but its owner is gone: record OperatorRestarted, then let go."""
    RELEASE = "release"
    """Finished but still carrying our finalizer: let go."""
    EXPIRE = "expire"
    """Finished longer ago than its time to live: delete it (its children go with it)."""


@dataclasses.dataclass(frozen=True)
class Action:
    verb: Verb
    cause: StopCause | None = None
    at: datetime.datetime | None = None
    """For WAIT: decide again at this time (a retry's backoff, a finished run's expiry)."""


@dataclasses.dataclass(frozen=True)
class Observed:
    """What this instance knows about one run, beside the object itself."""

    instance: str
    """This operator instance's identity."""
    executing: bool = False
    """An attempt of this run is in flight in this instance."""
    accepting: bool = True
    """Startup recovery is done and the instance is not draining."""
    draining: bool = False
    """The instance is shutting down: nothing new is taken on."""
    slot_free: bool = True
    """The concurrency cap has room for one more run."""
    default_ttl: datetime.timedelta | None = None
    """How long finished runs without ``ttlSecondsAfterFinished`` are kept (``None``: for ever)."""


WAIT = Action(Verb.WAIT)


def decide(run: ports.RunObject, observed: Observed, now: datetime.datetime) -> Action:
    """The one thing to do next about ``run``."""
    if not run.phase_readable:
        return Action(Verb.IGNORE)
    phase = run.status.phase

    if run.deleting:
        if observed.executing:
            return Action(Verb.STOP, StopCause.DELETED)
        if not run.has_finalizer or observed.draining:
            return WAIT
        return Action(Verb.RELEASE) if phase.terminal else Action(Verb.CANCEL, StopCause.DELETED)

    if phase.terminal:
        if observed.executing or observed.draining:
            return WAIT
        if run.has_finalizer:
            return Action(Verb.RELEASE)
        expiry = expires_at(run, observed.default_ttl)
        if expiry is None:
            return WAIT
        return Action(Verb.EXPIRE) if expiry <= now else Action(Verb.WAIT, at=expiry)

    if run.cancel_requested:
        if observed.executing:
            return Action(Verb.STOP, StopCause.REQUESTED)
        if observed.draining:
            return WAIT
        if phase is models.Phase.RUNNING and owner_alive(run, observed):
            return WAIT  # its owner sees the same request and stops it
        if phase is models.Phase.RUNNING and in_pod(run):
            return Action(Verb.ADOPT)  # then stopped as its owner: the Pod flushes and is deleted
        return Action(Verb.CANCEL, StopCause.REQUESTED)

    if phase is models.Phase.RUNNING:
        if observed.executing:
            return WAIT
        if owner_alive(run, observed):
            return WAIT
        if in_pod(run):
            return WAIT if observed.draining else Action(Verb.ADOPT)
        return Action(Verb.FAIL_ORPHAN)

    # Pending
    if observed.executing or not observed.accepting:
        return WAIT
    retry_at = run.status.next_attempt_time
    if retry_at is not None and retry_at > now:
        return Action(Verb.WAIT, at=retry_at)
    return Action(Verb.ADMIT) if observed.slot_free else Action(Verb.QUEUE)


def in_pod(run: ports.RunObject) -> bool:
    """The run's current attempt executes in a named Pod, which outlives the operator that created it."""
    last = run.status.last_attempt
    return (
        last is not None
        and last.mode is models.RunnerMode.POD
        and last.pod_name is not None
        and last.completion_time is None
    )


def deadline_seconds(run: ports.RunObject, default: float) -> float:
    """The run's wall-clock budget, counted from ``startTime`` across attempts."""
    spec = run.effective_spec
    return float(spec.timeout_seconds) if spec is not None and spec.timeout_seconds else default


def expires_at(run: ports.RunObject, default_ttl: datetime.timedelta | None) -> datetime.datetime | None:
    """When a finished run is deleted: ``ttlSecondsAfterFinished`` (or the default) after ``completionTime``."""
    completed = run.status.completion_time
    if completed is None:
        return None
    raw = run.raw_spec.get("ttlSecondsAfterFinished")
    if raw is None and run.status.agent is not None:
        raw = run.status.agent.spec.defaults.ttl_seconds_after_finished  # the Agent's default
    ttl = datetime.timedelta(seconds=raw) if isinstance(raw, int) and raw >= 0 else default_ttl
    return None if ttl is None else completed + ttl


TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429})


def transient_model_error(status_code: int | None) -> bool:
    """A model error worth retrying: no HTTP answer at all (timeout, connection), 408/425/429 or 5xx."""
    return status_code is None or status_code in TRANSIENT_HTTP_STATUSES or status_code >= 500


def retry_at(
    run: ports.RunObject,
    ending: transitions.Ending,
    now: datetime.datetime,
    *,
    deadline_seconds: float,
    jitter: float,
) -> datetime.datetime | None:
    """When the next attempt starts, or ``None`` when ``ending`` is final.

    An attempt is retried when the run asks for it, its reason is in ``retryOn`` (a
    ModelError only when transient), attempts remain, and the backoff ends before the
    run's deadline. The backoff doubles with each failed attempt, capped, and is
    scaled by ``jitter`` (0.5 to 1) so that runs failing together do not retry together.
    """
    spec = run.effective_spec
    if spec is None or spec.retry is None or ending.phase is not models.Phase.FAILED:
        return None
    retry = spec.retry
    if ending.reason.value not in {reason.value for reason in retry.retry_on}:
        return None
    if ending.reason is models.Reason.MODEL_ERROR and not transient_model_error(ending.status_code):
        return None
    failed = len(run.status.attempts)
    if failed > retry.limit:
        return None
    delay = min(float(models.MAX_RETRY_BACKOFF_SECONDS), retry.backoff_seconds * 2 ** (failed - 1)) * jitter
    at = now + datetime.timedelta(seconds=delay)
    start = run.status.start_time or now
    if at >= start + datetime.timedelta(seconds=deadline_seconds):
        return None  # the next attempt could not start before the run's deadline
    return at


def owner_alive(run: ports.RunObject, observed: Observed) -> bool:
    """Whether the instance that runs ``run`` is still driving it.

    Only the holder of the leader Lease decides, so an owner other than this instance
    has lost the Lease and stopped acting (see :mod:`agentrun.kube.lease`). A run
    recorded as this instance's that this instance does not execute was left by an
    earlier life of the same identity. Either way the owner is gone.
    """
    owner = run.status.runner.instance if run.status.runner else None
    return owner == observed.instance and observed.executing
