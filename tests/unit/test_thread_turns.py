"""Conversations in AgentThreads: turns, the four multitask strategies, and the seed rule."""

from __future__ import annotations

import fakes
import pytest

from agentrun.api import models
from agentrun.runtime import ports, reconciler, runner, threads

QUIET = {"resync_interval_seconds": 5}


def turn(prompt: str, thread: str = "chat", *, delay: float = 0.0) -> dict[str, object]:
    return fakes.echo_spec(prompt, delay=delay, threadRef={"name": thread})


async def started(make_reconciler: fakes.MakeReconciler, task_runner: runner.TaskRunner) -> reconciler.Reconciler:
    core = make_reconciler(task_runner, **QUIET)
    await core.recover()
    return core


async def finished(run_store: fakes.FakeRunStore, name: str) -> models.AgentRunStatus:
    def done() -> bool:
        run = run_store.last(name)
        return run.status.phase.terminal and not run.has_finalizer

    await fakes.eventually(done, what=f"{name} to finish", timeout=10)
    return run_store.last(name).status


async def thread_settled(run_store: fakes.FakeRunStore, name: str = "chat") -> models.AgentThreadStatus:
    await fakes.eventually(lambda: run_store.thread(name).status.active_run is None, what="the thread to be free")
    return run_store.thread(name).status


async def test_turns_continue_the_threads_history(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    run_store.add_thread("chat")
    await started(make_reconciler, task_runner)
    run_store.add("t1", turn("my name is Ada"))
    assert (await finished(run_store, "t1")).output == "echo: my name is Ada"
    run_store.add("t2", turn("what is my name?"))

    second = await finished(run_store, "t2")
    thread = await thread_settled(run_store)

    assert second.output == "echo (turn 2): what is my name? | earlier you said: my name is Ada"
    assert (thread.phase, thread.last_run, thread.run_count) == (models.ThreadPhase.IDLE, "t2", 2)
    assert thread.history is not None


async def test_enqueue_runs_waiting_runs_first_created_first(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    run_store.add_thread("chat", "enqueue")
    await started(make_reconciler, task_runner)
    run_store.add("first", turn("one", delay=0.3))
    await fakes.eventually(lambda: run_store.thread("chat").status.active_run == "first", what="first to hold")
    run_store.add("second", turn("two"))
    run_store.add("third", turn("three"))
    await fakes.eventually(
        lambda: run_store.object("third").status.reason == "ThreadBusy", what="third to wait for the thread"
    )
    assert run_store.object("second").status.message == "waiting for run 'first' to finish in AgentThread 'chat'"

    statuses = [await finished(run_store, name) for name in ("first", "second", "third")]

    assert [s.phase for s in statuses] == [models.Phase.SUCCEEDED] * 3
    starts = [s.start_time for s in statuses]
    assert starts == sorted(starts)  # in creation order
    assert statuses[2].output == "echo (turn 3): three | earlier you said: one / two"
    assert (await thread_settled(run_store)).run_count == 3


async def test_reject_fails_the_newcomer_naming_the_busy_run(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    run_store.add_thread("chat", "reject")
    await started(make_reconciler, task_runner)
    run_store.add("busy", turn("long", delay=0.3))
    await fakes.eventually(lambda: run_store.thread("chat").status.active_run == "busy", what="busy to hold")
    run_store.add("late", turn("too late"))

    late = await finished(run_store, "late")
    busy = await finished(run_store, "busy")

    assert (late.phase, late.reason) == (models.Phase.FAILED, "InvalidRequest")
    assert late.message == threads.busy_message("chat", "busy")
    assert busy.phase is models.Phase.SUCCEEDED


@pytest.mark.parametrize(("strategy", "kept"), [("interrupt", True), ("rollback", False)])
async def test_interrupt_and_rollback_cancel_the_active_run(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    task_runner: runner.TaskRunner,
    strategy: str,
    kept: bool,
) -> None:
    run_store.add_thread("chat", strategy)
    await started(make_reconciler, task_runner)
    run_store.add("setup", turn("hello"))
    await finished(run_store, "setup")
    run_store.add("slow", turn("a question never answered", delay=30))
    await fakes.eventually(lambda: run_store.thread("chat").status.active_run == "slow", what="slow to hold")
    run_store.add("new", turn("next question"))

    slow = await finished(run_store, "slow")
    new = await finished(run_store, "new")

    assert (slow.phase, slow.reason) == (models.Phase.CANCELLED, "Interrupted")
    assert new.phase is models.Phase.SUCCEEDED
    assert ("a question never answered" in (new.output or "")) is kept
    assert "hello" in (new.output or "")


async def test_a_run_of_a_missing_thread_fails_with_a_clear_message(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    await started(make_reconciler, task_runner)
    run_store.add("lost", turn("hi", thread="nowhere"))

    status = await finished(run_store, "lost")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InvalidRequest")
    assert status.message == "AgentThread 'nowhere' was not found in namespace 'ns'"


async def test_deleting_the_thread_cancels_its_active_run(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    run_store.add_thread("chat")
    core = await started(make_reconciler, task_runner)
    run_store.add("talking", turn("hi", delay=30))
    await fakes.eventually(lambda: run_store.thread("chat").status.active_run == "talking", what="it to hold")
    del run_store.threads["ns", "chat"]
    core.thread_gone("ns", "chat")

    status = await finished(run_store, "talking")
    assert (status.phase, status.message) == (models.Phase.CANCELLED, "run cancelled: its AgentThread was deleted")


def run_created(name: str, turn_taken: int) -> ports.RunObject:
    body = {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": turn("x"),
        "status": {"phase": "Running", "threadTurn": turn_taken},
    }
    return ports.RunObject.from_body(body)


HISTORY = models.SessionSnapshot(
    layers=[models.LayerSnapshot(name="llm", lifecycle_state=models.LifecycleState.SUSPENDED)]
)


def test_seed_rule_an_older_run_ending_late_never_overwrites_the_thread() -> None:
    older, newer = run_created("older", 1), run_created("newer", 2)
    after_newer = threads.released(models.AgentThreadStatus(), newer, history=HISTORY, history_ref=None, failed=False)
    # The older run was orphaned by a crash and is failed only now: the thread keeps following the newer.
    after_older = threads.released(after_newer, older, history=None, history_ref=None, failed=True)
    assert after_older == after_newer
    assert (after_older.phase, after_older.last_run, after_older.history) == (models.ThreadPhase.IDLE, "newer", HISTORY)


def test_an_older_run_still_lets_go_of_the_thread_it_held() -> None:
    older, newer = run_created("older", 1), run_created("newer", 2)
    held = threads.claimed(
        threads.released(models.AgentThreadStatus(), newer, history=HISTORY, history_ref=None, failed=False), older
    )
    after = threads.released(held, older, history=None, history_ref=None, failed=True)
    assert (after.active_run, after.phase, after.last_run) == (None, models.ThreadPhase.IDLE, "newer")


def test_a_run_that_never_took_a_turn_changes_nothing() -> None:
    newer = run_created("newer", 1)
    refused = ports.RunObject.from_body(
        {"metadata": {"name": "refused", "namespace": "ns", "uid": "u"}, "spec": turn("x")}
    )
    after_newer = threads.released(models.AgentThreadStatus(), newer, history=HISTORY, history_ref=None, failed=False)
    assert threads.released(after_newer, refused, history=None, history_ref=None, failed=True) == after_newer


def test_a_failed_newest_run_puts_the_thread_in_error_and_keeps_the_history() -> None:
    first, second = run_created("first", 1), run_created("second", 2)
    ok = threads.released(models.AgentThreadStatus(), first, history=HISTORY, history_ref=None, failed=False)
    failed = threads.released(threads.claimed(ok, second), second, history=None, history_ref=None, failed=True)
    assert (failed.phase, failed.last_run, failed.history, failed.run_count) == (
        models.ThreadPhase.ERROR, "second", HISTORY, 2,
    )  # fmt: skip
