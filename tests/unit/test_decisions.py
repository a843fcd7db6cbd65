"""The reconciler's decision table, row by row."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import fakes
import pytest

from agentrun.api import models
from agentrun.runtime import decisions, ports

NOW = fakes.EPOCH
ME = "me"
Verb = decisions.Verb
Cause = decisions.StopCause


def run(
    phase: str = "Pending",
    *,
    owner: str | None = None,
    beat_age: float | None = None,
    finalizer: bool = False,
    deleting: bool = False,
    cancel: bool = False,
    status: Any = None,
) -> ports.RunObject:
    wire: dict[str, Any] = {"phase": phase}
    if owner is not None:
        wire["runner"] = {"mode": "task", "instance": owner}
        if beat_age is not None:
            wire["runner"]["heartbeatTime"] = (NOW - datetime.timedelta(seconds=beat_age)).isoformat()
    metadata: dict[str, Any] = {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "1"}
    if finalizer:
        metadata["finalizers"] = [models.FINALIZER]
    if deleting:
        metadata["deletionTimestamp"] = NOW.isoformat()
    spec = fakes.echo_spec(**({"cancel": True} if cancel else {}))
    return ports.RunObject.from_body({"metadata": metadata, "spec": spec, "status": wire if status is None else status})


IDLE = decisions.Observed(instance=ME, heartbeat_timeout=datetime.timedelta(seconds=60))
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
    pytest.param(run("Running", owner=ME, beat_age=1), EXECUTING, Verb.WAIT, None, id="running-ours-wait"),
    pytest.param(run("Running", owner=ME, beat_age=1), IDLE, Verb.FAIL_ORPHAN, None, id="running-ours-forgotten"),
    pytest.param(run("Running", owner="other", beat_age=1), IDLE, Verb.WAIT, None, id="running-foreign-alive"),
    pytest.param(run("Running", owner="other", beat_age=61), IDLE, Verb.FAIL_ORPHAN, None, id="running-foreign-dead"),
    pytest.param(run("Running", owner="other"), IDLE, Verb.FAIL_ORPHAN, None, id="running-without-heartbeat"),
    pytest.param(
        run("Running", owner="other", beat_age=61), DRAINING, Verb.FAIL_ORPHAN, None, id="orphan-failed-even-draining"
    ),
    pytest.param(run("Running", owner=ME, cancel=True), EXECUTING, Verb.STOP, Cause.REQUESTED, id="cancel-ours"),
    pytest.param(
        run("Running", owner="other", beat_age=1, cancel=True), IDLE, Verb.WAIT, None, id="cancel-left-to-live-owner"
    ),
    pytest.param(
        run("Running", owner="other", beat_age=61, cancel=True), IDLE, Verb.CANCEL, Cause.REQUESTED, id="cancel-orphan"
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
