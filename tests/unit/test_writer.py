"""Guarded writes: recomputed on conflict, retried on outages, never lost or doubled."""

from __future__ import annotations

import time

import fakes
import pytest

from agentrun.api import models
from agentrun.runtime import metrics, ports, writer


@pytest.fixture
def run_metrics() -> metrics.Metrics:
    return metrics.Metrics()


@pytest.fixture
def guarded(run_store: fakes.FakeRunStore, run_metrics: metrics.Metrics) -> writer.Writer:
    return writer.Writer(run_store, run_metrics)


def with_message(message: str) -> writer.StatusChange:
    """A change that appends to the stored message, so recomputation is visible."""

    def change(current: ports.RunObject) -> models.AgentRunStatus | None:
        return current.status.model_copy(update={"message": (current.status.message or "") + message})

    return change


def failures(run_metrics: metrics.Metrics, cause: str) -> float | None:
    return run_metrics.registry.get_sample_value("agentrun_status_write_failures_total", {"cause": cause})


async def test_write_is_applied_once(run_store: fakes.FakeRunStore, guarded: writer.Writer) -> None:
    run = run_store.add("a")
    written = await guarded.write_status(run, with_message("x"), what="test")
    assert written is not None
    assert written.changed
    assert written.run.status.message == "x"
    assert int(written.run.resource_version) > int(run.resource_version)
    assert run_store.writes_of("a") == [("status", "Pending")]


async def test_conflict_recomputes_the_change_from_the_stored_object(
    run_store: fakes.FakeRunStore, guarded: writer.Writer
) -> None:
    stale = run_store.add("a")
    run_store.set_status("a", models.AgentRunStatus(message="theirs;"))
    seen: list[str | None] = []

    def change(current: ports.RunObject) -> models.AgentRunStatus:
        seen.append(current.status.message)
        return current.status.model_copy(update={"message": f"{current.status.message or ''}ours"})

    written = await guarded.write_status(stale, change, what="test")

    assert written is not None
    assert written.run.status.message == "theirs;ours"
    assert seen == [None, "theirs;"]
    assert run_store.refusals == [fakes.Refusal("status", "a", "Conflict")]
    assert len(run_store.writes) == 1


async def test_declined_change_writes_nothing(run_store: fakes.FakeRunStore, guarded: writer.Writer) -> None:
    run = run_store.add("a")
    written = await guarded.write_status(run, lambda current: None, what="test")
    assert written is not None
    assert not written.changed
    assert written.run == run
    assert run_store.writes == []


async def test_decline_after_a_conflict_reports_unchanged(
    run_store: fakes.FakeRunStore, guarded: writer.Writer
) -> None:
    """The first terminal state wins: a change that sees it on the re-read declines."""
    stale = run_store.add("a")
    run_store.set_status("a", models.AgentRunStatus(phase=models.Phase.SUCCEEDED, reason="Succeeded"))

    def end(current: ports.RunObject) -> models.AgentRunStatus | None:
        if current.status.phase.terminal:
            return None
        return current.status.model_copy(update={"phase": models.Phase.FAILED})

    written = await guarded.write_status(stale, end, what="test")

    assert written is not None
    assert not written.changed
    assert written.run.status.phase is models.Phase.SUCCEEDED
    assert run_store.writes == []


async def test_missing_object_gives_none(run_store: fakes.FakeRunStore, guarded: writer.Writer) -> None:
    run = run_store.add("a")
    run_store.delete("a")
    assert await guarded.write_status(run, with_message("x"), what="test") is None
    assert await guarded.set_finalizer(run, True) is None
    assert run_store.writes == []


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ports.Unavailable, id="unavailable"),
        pytest.param(ports.Forbidden, id="forbidden"),
    ],
)
async def test_failed_writes_are_retried_and_counted(
    run_store: fakes.FakeRunStore,
    guarded: writer.Writer,
    run_metrics: metrics.Metrics,
    error: type[ports.ApiError],
) -> None:
    run = run_store.add("a")
    run_store.fail_next_writes(2, error)

    written = await guarded.write_status(run, with_message("x"), what="test")

    assert written is not None
    assert written.run.status.message == "x"
    assert [r.error for r in run_store.refusals] == [error.__name__] * 2
    assert len(run_store.writes) == 1
    assert failures(run_metrics, error.__name__) == 2


async def test_rejected_write_is_not_retried(
    run_store: fakes.FakeRunStore, guarded: writer.Writer, run_metrics: metrics.Metrics
) -> None:
    run = run_store.add("a")
    run_store.fail_next_writes(1, ports.Rejected)

    assert await guarded.write_status(run, with_message("x"), what="test") is None
    assert run_store.writes == []
    assert failures(run_metrics, "Rejected") == 1


async def test_rejected_write_falls_back_to_the_smaller_status(
    run_store: fakes.FakeRunStore, guarded: writer.Writer
) -> None:
    run = run_store.add("a")
    run_store.fail_next_writes(1, ports.Rejected)

    written = await guarded.write_status(run, with_message("x"), what="test", fallback=with_message("fallback"))

    assert written is not None
    assert written.changed
    assert written.run.status.message == "fallback"
    assert len(run_store.writes) == 1


async def test_retries_stop_at_the_deadline(
    run_store: fakes.FakeRunStore, guarded: writer.Writer, run_metrics: metrics.Metrics
) -> None:
    run = run_store.add("a")
    run_store.fail_next_writes(1000)
    started = time.monotonic()

    written = await guarded.write_status(run, with_message("x"), what="test", deadline=started + 0.3)

    assert written is None
    assert time.monotonic() - started < 1.0
    assert run_store.writes == []
    attempts = len(run_store.refusals)
    assert attempts >= 2
    assert failures(run_metrics, "Unavailable") == attempts


async def test_finalizer_is_added_once_and_removed_once(run_store: fakes.FakeRunStore, guarded: writer.Writer) -> None:
    run = run_store.add("a")
    held = await guarded.set_finalizer(run, True)
    assert held is not None
    assert held.has_finalizer
    again = await guarded.set_finalizer(run, True)  # stale copy: conflict, re-read, nothing to do
    assert again is not None
    assert again.has_finalizer
    released = await guarded.set_finalizer(held, False)
    assert released is not None
    assert not released.has_finalizer
    assert run_store.writes_of("a") == [("finalizer", "add"), ("finalizer", "remove")]


async def test_finalizers_of_others_are_kept(run_store: fakes.FakeRunStore, guarded: writer.Writer) -> None:
    run = run_store.add("a", finalizers=("example.com/keep",))
    held = await guarded.set_finalizer(run, True)
    assert held is not None
    assert held.finalizers == ("example.com/keep", models.FINALIZER)
    released = await guarded.set_finalizer(held, False)
    assert released is not None
    assert released.finalizers == ("example.com/keep",)


@pytest.mark.parametrize(
    ("status", "deleting"),
    [
        pytest.param(models.AgentRunStatus(phase=models.Phase.SUCCEEDED), False, id="finished"),
        pytest.param(models.AgentRunStatus(phase=models.Phase.FAILED), False, id="failed"),
        pytest.param(models.AgentRunStatus(), True, id="deleting"),
    ],
)
async def test_finalizer_is_never_added_to_a_run_going_away(
    run_store: fakes.FakeRunStore, guarded: writer.Writer, status: models.AgentRunStatus, deleting: bool
) -> None:
    run_store.add("a", status=status, finalizers=("example.com/keep",))
    if deleting:
        run_store.delete("a")
    result = await guarded.set_finalizer(run_store.object("a"), True)
    assert result is not None
    assert not result.has_finalizer
    assert run_store.writes == []


async def test_removing_the_last_finalizer_of_a_deleting_run_lets_it_go(
    run_store: fakes.FakeRunStore, guarded: writer.Writer
) -> None:
    run_store.add("a", finalizers=(models.FINALIZER,))
    run_store.delete("a")
    assert run_store.object("a").deleting

    released = await guarded.set_finalizer(run_store.object("a"), False)

    assert released is not None
    assert not released.has_finalizer
    assert not run_store.exists("a")


async def test_backoff_gives_up_when_the_deadline_has_passed() -> None:
    backoff = writer.Backoff(initial=10)
    started = time.monotonic()
    assert await backoff.sleep(started - 1) is False
    assert await backoff.sleep(started + 0.05) is False  # the delay is cut to the deadline
    assert time.monotonic() - started < 1
