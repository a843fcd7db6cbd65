"""The reconciler's decision table, row by row."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import fakes
import pytest

from agentrun.api import models
from agentrun.runtime import decisions, ports, transitions

NOW = fakes.EPOCH
ME = "me"
Verb = decisions.Verb
Cause = decisions.StopCause


def run(
    phase: str = "Pending",
    *,
    owner: str | None = None,
    finalizer: bool = False,
    deleting: bool = False,
    cancel: bool = False,
    status: Any = None,
    pod: bool = False,
) -> ports.RunObject:
    wire: dict[str, Any] = {"phase": phase}
    if owner is not None:
        wire["runner"] = {"mode": "pod" if pod else "task", "instance": owner}
    if pod:
        started = NOW.isoformat()
        wire["attempts"] = [{"number": 1, "mode": "pod", "instance": owner, "podName": "a-u-a1", "startTime": started}]
    metadata: dict[str, Any] = {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "1"}
    if finalizer:
        metadata["finalizers"] = [models.FINALIZER]
    if deleting:
        metadata["deletionTimestamp"] = NOW.isoformat()
    spec = fakes.echo_spec(**({"cancel": True} if cancel else {}))
    return ports.RunObject.from_body({"metadata": metadata, "spec": spec, "status": wire if status is None else status})


IDLE = decisions.Observed(instance=ME)
EXECUTING = dataclasses.replace(IDLE, executing=True)
FULL = dataclasses.replace(IDLE, slot_free=False)
STARTING = dataclasses.replace(IDLE, accepting=False)
DRAINING = dataclasses.replace(IDLE, accepting=False, draining=True)

ROWS = [
    # pending
    pytest.param(run(), IDLE, Verb.ADMIT, None, id="pending-slot-free-admit"),
    pytest.param(run(), FULL, Verb.QUEUE, None, id="pending-cap-reached-queue"),
    pytest.param(run(), STARTING, Verb.WAIT, None, id="pending-before-recovery-wait"),
    pytest.param(run(), DRAINING, Verb.WAIT, None, id="pending-while-draining-left-for-next-instance"),
    pytest.param(run(), EXECUTING, Verb.WAIT, None, id="pending-copy-while-admitting-wait"),
    pytest.param(run(cancel=True), IDLE, Verb.CANCEL, Cause.REQUESTED, id="pending-cancelled-never-starts"),
    pytest.param(run(cancel=True), FULL, Verb.CANCEL, Cause.REQUESTED, id="queued-cancelled-never-starts"),
    # running
    pytest.param(run("Running", owner=ME), EXECUTING, Verb.WAIT, None, id="running-ours-wait"),
    pytest.param(run("Running", owner=ME), IDLE, Verb.FAIL_ORPHAN, None, id="running-ours-left-by-an-earlier-life"),
    # Only the Lease holder decides: another instance's Running run was left when it lost the Lease.
    pytest.param(run("Running", owner="other"), IDLE, Verb.FAIL_ORPHAN, None, id="running-foreign-owner-gone"),
    pytest.param(run("Running"), IDLE, Verb.FAIL_ORPHAN, None, id="running-without-owner"),
    pytest.param(run("Running", owner="other"), DRAINING, Verb.FAIL_ORPHAN, None, id="orphan-failed-even-draining"),
    pytest.param(run("Running", owner=ME, cancel=True), EXECUTING, Verb.STOP, Cause.REQUESTED, id="cancel-ours"),
    pytest.param(run("Running", owner="other", cancel=True), IDLE, Verb.CANCEL, Cause.REQUESTED, id="cancel-orphan"),
    pytest.param(
        run("Running", owner="other", cancel=True), DRAINING, Verb.WAIT, None, id="cancel-left-to-the-next-leader"
    ),
    # running in a Pod: the Pod outlives its operator, so an orphan is adopted, never failed
    pytest.param(run("Running", owner=ME, pod=True), EXECUTING, Verb.WAIT, None, id="pod-ours-wait"),
    pytest.param(run("Running", owner="other", pod=True), IDLE, Verb.ADOPT, None, id="pod-orphan-adopt"),
    pytest.param(run("Running", owner=ME, pod=True), IDLE, Verb.ADOPT, None, id="pod-ours-forgotten-adopt"),
    pytest.param(
        run("Running", owner="other", pod=True),
        STARTING,
        Verb.ADOPT,
        None,
        id="pod-orphan-adopted-during-recovery",
    ),
    pytest.param(
        run("Running", owner="other", pod=True),
        DRAINING,
        Verb.WAIT,
        None,
        id="pod-orphan-left-to-next-instance-while-draining",
    ),
    pytest.param(
        run("Running", owner="other", pod=True, cancel=True),
        IDLE,
        Verb.ADOPT,
        None,
        id="pod-orphan-cancelled-adopted-then-stopped",
    ),
    pytest.param(
        run("Running", owner=ME, pod=True, cancel=True),
        EXECUTING,
        Verb.STOP,
        Cause.REQUESTED,
        id="pod-cancel-ours-stop",
    ),
    # deletion
    pytest.param(
        run("Running", owner=ME, deleting=True, finalizer=True), EXECUTING, Verb.STOP, Cause.DELETED, id="del-ours"
    ),
    pytest.param(
        run("Running", owner="x", deleting=True, finalizer=True), IDLE, Verb.CANCEL, Cause.DELETED, id="del-held"
    ),
    pytest.param(run("Succeeded", deleting=True, finalizer=True), IDLE, Verb.RELEASE, None, id="del-finished-held"),
    pytest.param(run(deleting=True), IDLE, Verb.WAIT, None, id="del-not-held"),
    pytest.param(run("Running", deleting=True, finalizer=True), DRAINING, Verb.WAIT, None, id="del-while-draining"),
    # finished
    pytest.param(run("Succeeded"), IDLE, Verb.WAIT, None, id="finished-wait"),
    pytest.param(run("Failed", finalizer=True), IDLE, Verb.RELEASE, None, id="finished-held-release"),
    pytest.param(run("Succeeded", cancel=True), IDLE, Verb.WAIT, None, id="finished-then-cancelled-unchanged"),
    pytest.param(run("Cancelled", finalizer=True), EXECUTING, Verb.WAIT, None, id="finished-while-ending-wait"),
    # unreadable
    pytest.param(run("Retrying", finalizer=True), IDLE, Verb.IGNORE, None, id="unknown-phase-left-alone"),
    pytest.param(run(status="garbage"), IDLE, Verb.IGNORE, None, id="unparseable-status-left-alone"),
    pytest.param(
        run(status={"phase": "Succeeded", "usage": {"requests": "many"}}),
        IDLE,
        Verb.WAIT,
        None,
        id="odd-field-on-finished-run-stays-finished",
    ),
]


@pytest.mark.parametrize(("current", "observed", "verb", "cause"), ROWS)
def test_decide(
    current: ports.RunObject, observed: decisions.Observed, verb: decisions.Verb, cause: decisions.StopCause | None
) -> None:
    action = decisions.decide(current, observed, NOW)
    assert (action.verb, action.cause) == (verb, cause)


@pytest.mark.parametrize(
    ("cause", "phase", "reason", "message"),
    [
        pytest.param(Cause.DELETED, "Cancelled", "Cancelled", decisions.DELETED_MESSAGE, id="deleted"),
        pytest.param(Cause.REQUESTED, "Cancelled", "Cancelled", "run cancelled by request", id="requested"),
        pytest.param(
            Cause.SHUTDOWN, "Failed", "OperatorShutdown", "run cancelled during operator shutdown", id="shutdown"
        ),
    ],
)
def test_stop_causes_end_runs_with_their_reason(cause: Cause, phase: str, reason: str, message: str) -> None:
    ending = cause.ending()
    assert (ending.phase.value, ending.reason.value, ending.message) == (phase, reason, message)


def test_a_retry_waits_for_its_backoff_then_is_admitted() -> None:
    later = NOW + datetime.timedelta(seconds=30)
    waiting = run(status={"phase": "Pending", "reason": "RetryBackoff", "nextAttemptTime": later.isoformat()})
    assert decisions.decide(waiting, IDLE, NOW) == decisions.Action(Verb.WAIT, at=later)
    assert decisions.decide(waiting, IDLE, later).verb is Verb.ADMIT
    assert decisions.decide(waiting, FULL, later).verb is Verb.QUEUE


def finished(ttl: int | None, completed_ago: float) -> ports.RunObject:
    completed = NOW - datetime.timedelta(seconds=completed_ago)
    body: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
        "spec": fakes.echo_spec(**({} if ttl is None else {"ttlSecondsAfterFinished": ttl})),
        "status": {"phase": "Succeeded", "completionTime": completed.isoformat()},
    }
    return ports.RunObject.from_body(body)


HOUR = datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("current", "default_ttl", "expected"),
    [
        pytest.param(finished(60, 61), None, decisions.Action(Verb.EXPIRE), id="own-ttl-passed"),
        pytest.param(
            finished(60, 10),
            None,
            decisions.Action(Verb.WAIT, at=NOW + datetime.timedelta(seconds=50)),
            id="own-ttl-ahead",
        ),
        pytest.param(finished(0, 0), None, decisions.Action(Verb.EXPIRE), id="zero-ttl"),
        pytest.param(finished(None, 7200), HOUR, decisions.Action(Verb.EXPIRE), id="operator-default-passed"),
        pytest.param(finished(None, 7200), None, decisions.WAIT, id="kept-without-any-ttl"),
        pytest.param(finished(7200, 3600), HOUR, decisions.Action(Verb.WAIT, at=NOW + HOUR), id="own-ttl-wins"),
    ],
)
def test_finished_runs_expire_after_their_time_to_live(
    current: ports.RunObject, default_ttl: datetime.timedelta | None, expected: decisions.Action
) -> None:
    observed = dataclasses.replace(IDLE, default_ttl=default_ttl)
    assert decisions.decide(current, observed, NOW) == expected


def running_with_attempts(count: int, **retry: Any) -> ports.RunObject:
    attempts = [
        {"number": n, "mode": "task", "instance": ME, "startTime": NOW.isoformat()} for n in range(1, count + 1)
    ]
    body: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
        "spec": fakes.echo_spec(retry=retry) if retry else fakes.echo_spec(),
        "status": {"phase": "Running", "startTime": NOW.isoformat(), "attempts": attempts},
    }
    return ports.RunObject.from_body(body)


def model_error(status_code: int | None) -> transitions.Ending:
    return transitions.failure(models.Reason.MODEL_ERROR, "boom", status_code=status_code)


@pytest.mark.parametrize(
    ("current", "ending", "delay"),
    [
        pytest.param(running_with_attempts(1, limit=2, backoffSeconds=10), model_error(503), 10, id="503-retried"),
        pytest.param(running_with_attempts(1, limit=2, backoffSeconds=10), model_error(429), 10, id="429-retried"),
        pytest.param(running_with_attempts(1, limit=2, backoffSeconds=10), model_error(None), 10, id="timeout-retried"),
        pytest.param(running_with_attempts(2, limit=2, backoffSeconds=10), model_error(500), 20, id="backoff-doubles"),
        pytest.param(running_with_attempts(3, limit=2, backoffSeconds=10), model_error(500), None, id="limit-reached"),
        pytest.param(running_with_attempts(1, limit=2, backoffSeconds=10), model_error(400), None, id="400-final"),
        pytest.param(running_with_attempts(1, limit=2, backoffSeconds=10), model_error(401), None, id="401-final"),
        pytest.param(running_with_attempts(1), model_error(503), None, id="no-retry-spec"),
        pytest.param(
            running_with_attempts(1, limit=2),
            transitions.failure(models.Reason.OPERATOR_RESTARTED, "lost"),
            10,
            id="operator-restarted-retried-by-default",
        ),
        pytest.param(
            running_with_attempts(1, limit=2),
            transitions.failure(models.Reason.OPERATOR_SHUTDOWN, "drain"),
            None,
            id="shutdown-not-in-default-list",
        ),
        pytest.param(
            running_with_attempts(1, limit=2, retryOn=["OperatorShutdown"]),
            transitions.failure(models.Reason.OPERATOR_SHUTDOWN, "drain"),
            10,
            id="shutdown-when-listed",
        ),
        pytest.param(
            running_with_attempts(1, limit=2, retryOn=["InternalError"]),
            model_error(503),
            None,
            id="reason-not-listed",
        ),
        pytest.param(
            running_with_attempts(1, limit=5),
            transitions.failure(models.Reason.INVALID_REQUEST, "bad"),
            None,
            id="invalid-request-never",
        ),
        pytest.param(
            running_with_attempts(4, limit=5, backoffSeconds=150),  # 150 * 2**3 = 1200, capped at 600
            model_error(503),
            600,
            id="backoff-capped-inside-the-deadline",
        ),
        pytest.param(running_with_attempts(10, limit=20, backoffSeconds=10), model_error(503), 600, id="capped"),
    ],
)
def test_retry_policy(current: ports.RunObject, ending: transitions.Ending, delay: float | None) -> None:
    at = decisions.retry_at(current, ending, NOW, deadline_seconds=900, jitter=1.0)
    assert at == (None if delay is None else NOW + datetime.timedelta(seconds=delay))


def test_retry_jitter_shortens_the_backoff() -> None:
    current = running_with_attempts(1, limit=1, backoffSeconds=10)
    assert decisions.retry_at(
        current, model_error(503), NOW, deadline_seconds=900, jitter=0.5
    ) == NOW + datetime.timedelta(seconds=5)


def test_no_retry_starts_after_the_runs_deadline() -> None:
    current = running_with_attempts(1, limit=5, backoffSeconds=600)
    assert decisions.retry_at(current, model_error(503), NOW, deadline_seconds=900, jitter=1.0) is not None
    assert decisions.retry_at(current, model_error(503), NOW, deadline_seconds=600, jitter=1.0) is None
