"""How a run's end is decided and recorded: results stored, the terminal write, letting go.

A successful result is checked and, when too large for the status, moved into a
Secret owned by the run. Every path ends in a terminal status: a result that cannot
be serialised or stored fails the run with a reason; a status the API server rejects
is replaced by a minimal one. Then the finalizer is released.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import random
from typing import Any

import pydantic_core

from agentrun.api import models
from agentrun.layers import compositor
from agentrun.runtime import changes, decisions, metrics, ports, services, threads, transitions, writer

logger = logging.getLogger(__name__)

# Secrets hold at most 1 MiB; leave room for the object's own metadata.
MAX_PAYLOAD_BYTES = 1024 * 1024 - 16 * 1024
OFFLOAD_TIMEOUT_SECONDS = 30.0
"""How long storing an offloaded result may keep retrying before the run fails."""


def serialised(value: Any) -> str:
    """Compact JSON of ``value``; raises TypeError/ValueError when it is not JSON."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def result_payloads(result: compositor.CompositionResult) -> tuple[str, str] | transitions.Ending:
    """The output and session snapshot as JSON, or the failure that they cannot be."""
    try:
        output_json = serialised(result.output)
    except (TypeError, ValueError) as error:
        return transitions.failure(
            models.Reason.INTERNAL_ERROR, f"the run's output is not JSON and cannot be recorded: {error}"
        )
    try:
        snapshot_json = serialised(result.session_snapshot.to_wire())
    except (TypeError, ValueError, pydantic_core.PydanticSerializationError) as error:
        return transitions.failure(
            models.Reason.INTERNAL_ERROR, f"the run's session state is not JSON and cannot be recorded: {error}"
        )
    for payload, what in ((output_json, "output"), (snapshot_json, "session snapshot")):
        size = len(payload.encode())
        if size > MAX_PAYLOAD_BYTES:
            return transitions.failure(
                models.Reason.OUTPUT_TOO_LARGE,
                f"the run's {what} is {size} bytes; at most {MAX_PAYLOAD_BYTES} can be stored",
            )
    return output_json, snapshot_json


async def success(
    svc: services.Services, run: ports.RunObject, result: compositor.CompositionResult, *, deadline: float
) -> transitions.Ending:
    """The Succeeded ending, with output or snapshot moved out of the status when too large."""
    payloads = result_payloads(result)
    if isinstance(payloads, transitions.Ending):
        return payloads
    output_json, snapshot_json = payloads
    budget = svc.settings.status_budget_bytes
    # The output appears twice (status.output and the run_succeeded event), the snapshot once.
    inline_output = 2 * len(output_json.encode()) <= budget // 2
    inline_snapshot = len(snapshot_json.encode()) <= budget // 2
    output_ref = snapshot_ref = None
    try:
        if not inline_output:
            output_ref = await offload(svc, run, "output", output_json, deadline=deadline)
        if not inline_snapshot:
            snapshot_ref = await offload(svc, run, "session", snapshot_json, deadline=deadline)
    except ports.ApiError as error:
        return transitions.failure(models.Reason.RESULT_NOT_STORED, f"the run's result could not be stored: {error}")
    return transitions.Ending(
        phase=models.Phase.SUCCEEDED,
        reason=models.Reason.SUCCEEDED,
        output=result.output if inline_output else None,
        output_ref=output_ref,
        usage=result.usage,
        session_snapshot=result.session_snapshot if inline_snapshot else None,
        session_snapshot_ref=snapshot_ref,
        conversation=result.session_snapshot,
    )


async def offload(
    svc: services.Services, run: ports.RunObject, purpose: str, payload: str, *, deadline: float
) -> models.ContentRef:
    """Store ``payload`` in the run's own Secret, retrying transient failures until ``deadline``."""
    backoff = writer.Backoff()
    while True:
        try:
            return await svc.api.store_payload(run, purpose, payload)
        except (ports.Unavailable, ports.Forbidden) as error:
            logger.warning("could not store %s of AgentRun %s, will retry: %s", purpose, run.ref, error)
            if not await backoff.sleep(deadline):
                raise


def record_finished(run_metrics: metrics.Metrics, status: models.AgentRunStatus) -> None:
    """Count a terminal status this operator has just recorded."""
    duration = None
    if status.start_time and status.completion_time:
        duration = (status.completion_time - status.start_time).total_seconds()
    run_metrics.finished(status.phase, status.reason or "", duration, status.usage)


def unstorable(ending: transitions.Ending) -> transitions.Ending:
    """The minimal ending recorded when the API server rejects the real one."""
    return transitions.failure(
        models.Reason.INTERNAL_ERROR,
        f"the run ended ({ending.reason.value}) but the API server rejected its status; see the operator log",
    )


async def conclude(
    svc: services.Services,
    run: ports.RunObject,
    ending: transitions.Ending,
    *,
    events: list[transitions.PendingEvent] | None = None,
    attempt: int | None = None,
    deadline: float | None = None,
) -> ports.RunObject | None:
    """Record how an attempt (or the run) ended, announce it, and let the run go.

    An attempt that failed for a reason the run retries is recorded as such, and the
    run waits for its next attempt (still held by the finalizer); otherwise the end is
    terminal (the first end recorded wins) and the finalizer is released. Returns the
    run as last stored, or ``None`` when it is gone or nothing could be recorded
    before ``deadline`` (the caller keeps the ending to retry).
    """
    instance = svc.instance if attempt is not None else None
    at = next_attempt_at(svc, run, ending) if attempt is not None else None
    change = functools.partial(
        changes.end,
        ending=ending,
        events=events or [],
        now=svc.clock(),
        ring_size=svc.ring_size,
        instance=instance,
        attempt=attempt,
        retry_at=at,
    )
    fallback = functools.partial(change, ending=unstorable(ending), events=[], retry_at=None)
    written = await svc.writer.write_status(run, change, what="record the end", deadline=deadline, fallback=fallback)
    if written is None:
        logger.error("AgentRun %s: final status %s could not be recorded", run.ref, ending.reason.value)
        return None
    stored = written.run
    if written.changed and not stored.status.phase.terminal:
        announce_retry(svc, stored, ending)
        return stored  # waiting for its next attempt: still held
    if written.changed:
        announce_end(svc, stored)
        await threads.release(svc, stored, ending)
    elif not stored.status.phase.terminal:
        return stored  # no longer ours to end (another instance's attempt, or already retrying)
    return await release(svc, stored, deadline=deadline)


def next_attempt_at(
    svc: services.Services, run: ports.RunObject, ending: transitions.Ending
) -> datetime.datetime | None:
    """When the run's next attempt starts after ``ending``, or ``None`` when the end is final."""
    return decisions.retry_at(
        run,
        ending,
        svc.clock(),
        deadline_seconds=decisions.deadline_seconds(run, svc.settings.default_timeout_seconds),
        jitter=random.uniform(0.5, 1.0),
    )


def announce_retry(svc: services.Services, run: ports.RunObject, ending: transitions.Ending) -> None:
    """Metrics, log and a Kubernetes Event for an attempt that will be tried again."""
    svc.metrics.retries.labels(reason=ending.reason.value).inc()
    message = run.status.message or ""
    logger.info("AgentRun %s: %s", run.ref, message)
    svc.post_kube_event(run, ports.KubeEventType.WARNING, "AttemptFailed", message)


def announce_end(svc: services.Services, run: ports.RunObject) -> None:
    """Metrics and a Kubernetes Event for a terminal status this instance recorded."""
    status = run.status
    record_finished(svc.metrics, status)
    succeeded = status.phase is models.Phase.SUCCEEDED
    event_type = ports.KubeEventType.NORMAL if succeeded else ports.KubeEventType.WARNING
    svc.post_kube_event(run, event_type, status.phase.value, status.message or "run succeeded")


async def release(svc: services.Services, run: ports.RunObject, *, deadline: float | None = None) -> ports.RunObject:
    """Let go of a finished or abandoned run: remove our finalizer."""
    released = await svc.writer.set_finalizer(run, False, deadline=deadline)
    return released if released is not None else run
