"""The run's state machine as pure functions of (status, now)."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable

import pytest

from agentrun.api import models
from agentrun.runtime import progress as progress_sink
from agentrun.runtime import transitions

T0 = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)
RING = 50
RUNNER = models.RunnerStatus(mode=models.RunnerMode.TASK, instance="op-1")


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def running(now: datetime.datetime = T0, *, ring_size: int = RING) -> models.AgentRunStatus:
    return transitions.admitted(models.AgentRunStatus(), runner=RUNNER, generation=3, now=now, ring_size=ring_size)


_TICKS = itertools.count(1)


def progress(*kinds: str, now: datetime.datetime = T0) -> list[transitions.PendingEvent]:
    """Pending events as the progress sink makes them: each with a time of its own."""
    return [
        transitions.PendingEvent(kind, now + datetime.timedelta(microseconds=next(_TICKS)), {"n": i})
        for i, kind in enumerate(kinds)
    ]


SUCCESS = transitions.Ending(
    phase=models.Phase.SUCCEEDED,
    reason=models.Reason.SUCCEEDED,
    output={"bullets": ["a"]},
    usage=models.Usage(requests=1, input_tokens=10, output_tokens=5),
    session_snapshot=models.SessionSnapshot(
        layers=[models.LayerSnapshot(name="llm", lifecycle_state=models.LifecycleState.SUSPENDED)]
    ),
)


def test_queued_waits_as_pending_without_events() -> None:
    status = transitions.queued(models.AgentRunStatus(), generation=1, now=T0)
    assert (status.phase, status.reason) == (models.Phase.PENDING, "Queued")
    assert "concurrent-run limit" in (status.message or "")
    assert status.events == []
    assert status.event_count == 0
    condition = status.condition(models.CONDITION_SUCCEEDED)
    assert condition is not None
    assert (condition.status, condition.reason, condition.last_transition_time) == (
        models.ConditionStatus.UNKNOWN,
        "Queued",
        T0,
    )


def test_admitted_runs_with_owner_and_run_started() -> None:
    status = running(at(5))
    assert (status.phase, status.reason, status.message) == (models.Phase.RUNNING, "Running", "")
    assert status.start_time == at(5)
    assert status.runner == models.RunnerStatus(mode=models.RunnerMode.TASK, instance="op-1")
    assert [(e.id, e.type, e.time) for e in status.events] == [(1, "run_started", at(5))]
    assert status.event_count == 1
    assert status.observed_generation == 3
    condition = status.condition(models.CONDITION_SUCCEEDED)
    assert condition is not None
    assert (condition.status, condition.reason, condition.observed_generation) == (
        models.ConditionStatus.UNKNOWN,
        "Running",
        3,
    )


def test_progressed_appends_events_only() -> None:
    before = running(T0)
    status = transitions.progressed(before, progress("model_request", "tool_call"), now=at(30), ring_size=RING)
    assert [e.type for e in status.events] == ["run_started", "model_request", "tool_call"]
    assert status.model_copy(update={"events": before.events, "event_count": before.event_count}) == before


@pytest.mark.parametrize(
    ("ending", "phase", "condition_status", "event_type"),
    [
        pytest.param(SUCCESS, models.Phase.SUCCEEDED, models.ConditionStatus.TRUE, "run_succeeded", id="succeeded"),
        pytest.param(
            transitions.failure(models.Reason.MODEL_ERROR, "HTTP 429"),
            models.Phase.FAILED,
            models.ConditionStatus.FALSE,
            "run_failed",
            id="failed",
        ),
        pytest.param(
            transitions.Ending(phase=models.Phase.CANCELLED, reason=models.Reason.CANCELLED, message="deleted"),
            models.Phase.CANCELLED,
            models.ConditionStatus.FALSE,
            "run_cancelled",
            id="cancelled",
        ),
    ],
)
def test_ended_records_phase_condition_and_terminal_event(
    ending: transitions.Ending,
    phase: models.Phase,
    condition_status: models.ConditionStatus,
    event_type: str,
) -> None:
    status = transitions.ended(running(T0), ending, generation=3, now=at(9), ring_size=RING)
    assert (status.phase, status.reason, status.message) == (phase, ending.reason.value, ending.message)
    assert (status.start_time, status.completion_time) == (T0, at(9))
    condition = status.condition(models.CONDITION_SUCCEEDED)
    assert condition is not None
    assert (condition.status, condition.reason, condition.last_transition_time) == (
        condition_status,
        ending.reason.value,
        at(9),
    )
    last = status.events[-1]
    assert (last.type, last.time) == (event_type, at(9))
    assert last.data is not None
    assert last.data["reason"] == ending.reason.value


def test_succeeded_event_carries_output_usage_and_layer_states_not_the_history() -> None:
    status = transitions.ended(running(), SUCCESS, generation=3, now=at(1), ring_size=RING)
    assert status.events[-1].data == {
        "reason": "Succeeded",
        "output": {"bullets": ["a"]},
        "usage": {"requests": 1, "inputTokens": 10, "outputTokens": 5},
        "sessionSnapshot": {"llm": "suspended"},
    }
    assert status.output == {"bullets": ["a"]}
    assert status.session_snapshot == SUCCESS.session_snapshot


def test_succeeded_event_points_at_offloaded_payloads() -> None:
    ref = models.ContentRef(kind="Secret", name="run-output", key="output.json", size_bytes=999)
    ending = transitions.Ending(phase=models.Phase.SUCCEEDED, reason=models.Reason.SUCCEEDED, output_ref=ref)
    status = transitions.ended(running(), ending, generation=1, now=at(1), ring_size=RING)
    data = status.events[-1].data
    assert data is not None
    assert "output" not in data
    assert data["outputRef"] == {"kind": "Secret", "name": "run-output", "key": "output.json", "sizeBytes": 999}
    assert status.output_ref == ref


def test_ended_without_admission_sets_start_time() -> None:
    status = transitions.ended(
        models.AgentRunStatus(),
        transitions.failure(models.Reason.CANCELLED, "x"),
        generation=1,
        now=at(2),
        ring_size=RING,
    )
    assert status.start_time == status.completion_time == at(2)


def test_event_ids_strictly_increase_across_transitions() -> None:
    status = transitions.queued(models.AgentRunStatus(), generation=1, now=T0)
    status = transitions.admitted(status, runner=RUNNER, generation=1, now=at(1), ring_size=RING)
    status = transitions.progressed(status, progress("model_request"), now=at(2), ring_size=RING)
    status = transitions.progressed(status, [], now=at(3), ring_size=RING)
    status = transitions.progressed(status, progress("tool_call", "model_request"), now=at(4), ring_size=RING)
    status = transitions.ended(
        status, SUCCESS, events=progress("tool_call", now=at(5)), generation=1, now=at(5), ring_size=RING
    )
    ids = [event.id for event in status.events]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert [e.type for e in status.events] == [
        "run_started",
        "model_request",
        "tool_call",
        "model_request",
        "tool_call",
        "run_succeeded",
    ]
    assert status.event_count == 6


@pytest.mark.parametrize(
    ("emitted", "ring_size"),
    [
        pytest.param(3, 4, id="under-the-ring"),
        pytest.param(4, 5, id="exactly-full"),
        pytest.param(10, 4, id="overflowing"),
        pytest.param(120, 50, id="many"),
    ],
)
def test_ring_keeps_the_newest_and_counts_all(emitted: int, ring_size: int) -> None:
    status = running(ring_size=ring_size)
    for i in range(emitted):
        status = transitions.progressed(status, progress("tool_call"), now=at(i), ring_size=ring_size)
    status = transitions.ended(status, SUCCESS, generation=1, now=at(emitted), ring_size=ring_size)
    total = emitted + 2  # run_started and run_succeeded
    assert status.event_count == total
    assert [event.id for event in status.events] == list(range(max(1, total - ring_size + 1), total + 1))
    assert status.events[-1].type == "run_succeeded"


def test_events_already_recorded_are_not_added_again() -> None:
    # A write the API server applied but whose answer was lost is retried with the same events.
    pending = progress("model_request", "tool_call")
    once = transitions.progressed(running(), pending, now=at(1), ring_size=RING)
    again = transitions.ended(
        models.AgentRunStatus.model_validate(once.to_wire()),
        SUCCESS,
        events=[*pending, *progress("tool_call", now=at(2))],
        generation=1,
        now=at(3),
        ring_size=RING,
    )
    assert [(e.id, e.type) for e in again.events] == [
        (1, "run_started"),
        (2, "model_request"),
        (3, "tool_call"),
        (4, "tool_call"),
        (5, "run_succeeded"),
    ]
    assert again.event_count == 5


def test_ring_survives_a_wire_round_trip() -> None:
    status = running(ring_size=4)
    for i in range(6):
        status = transitions.progressed(status, progress("tool_call"), now=at(i), ring_size=4)
    again = models.AgentRunStatus.model_validate(status.to_wire())
    more = transitions.progressed(again, progress("tool_call"), now=at(7), ring_size=4)
    assert [event.id for event in more.events] == [5, 6, 7, 8]


Transition = Callable[[models.AgentRunStatus], models.AgentRunStatus]

TRANSITIONS: list[object] = [
    pytest.param(lambda s: transitions.queued(s, generation=1, now=T0), id="queued"),
    pytest.param(lambda s: transitions.admitted(s, runner=RUNNER, generation=1, now=T0, ring_size=RING), id="admitted"),
    pytest.param(lambda s: transitions.progressed(s, [], now=T0, ring_size=RING), id="progressed"),
    pytest.param(lambda s: transitions.ended(s, SUCCESS, generation=1, now=T0, ring_size=RING), id="ended"),
]


@pytest.mark.parametrize("transition", TRANSITIONS)
@pytest.mark.parametrize("phase", [models.Phase.SUCCEEDED, models.Phase.FAILED, models.Phase.CANCELLED])
def test_terminal_status_never_changes(transition: Transition, phase: models.Phase) -> None:
    terminal = models.AgentRunStatus(phase=phase, reason="Whatever")
    with pytest.raises(transitions.TerminalStatusError, match=phase.value):
        transition(terminal)


def test_condition_transition_time_moves_only_when_the_status_value_changes() -> None:
    queued = transitions.queued(models.AgentRunStatus(), generation=1, now=T0)
    admitted = transitions.admitted(queued, runner=RUNNER, generation=1, now=at(10), ring_size=RING)
    progressed = transitions.progressed(admitted, progress("tool_call"), now=at(20), ring_size=RING)
    ended = transitions.ended(progressed, SUCCESS, generation=2, now=at(30), ring_size=RING)

    def succeeded(status: models.AgentRunStatus) -> models.Condition:
        condition = status.condition(models.CONDITION_SUCCEEDED)
        assert condition is not None
        return condition

    # Unknown -> Unknown: the reason changes, the transition time does not.
    assert (succeeded(admitted).reason, succeeded(admitted).last_transition_time) == ("Running", T0)
    assert succeeded(progressed).last_transition_time == T0
    # Unknown -> True: it moves.
    assert (succeeded(ended).status, succeeded(ended).last_transition_time) == (models.ConditionStatus.TRUE, at(30))
    assert succeeded(ended).observed_generation == 2


def test_other_conditions_are_kept() -> None:
    other = models.Condition(type="Ready", status=models.ConditionStatus.TRUE, reason="X", last_transition_time=T0)
    status = transitions.admitted(
        models.AgentRunStatus(conditions=[other]), runner=RUNNER, generation=1, now=at(1), ring_size=RING
    )
    assert [c.type for c in status.conditions] == ["Ready", "Succeeded"]
    assert status.condition("Ready") == other


def test_progress_sink_stamps_strictly_increasing_times() -> None:
    # Even on a clock that stands still, (type, time) stays unique within a run.
    sink = progress_sink.ProgressSink(lambda: T0)
    for _ in range(3):
        sink.emit("tool_call", {"tool": "lookup"})
    times = [event.time for event in sink.pending]
    assert times == sorted(set(times))
    assert times[0] == T0
