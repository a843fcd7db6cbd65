"""The reconciler driving runs end to end against the in-memory API.

The fake store delivers every change to the reconciler as the kopf watch would, so
each test also proves that observing a run again changes nothing more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime

import fakes
import pytest

from agentrun.api import models
from agentrun.layers import errors
from agentrun.runtime import decisions, ending, ports, reconciler, runner, transitions

HAPPY_WRITES = [("finalizer", "add"), ("status", "Running"), ("status", "Succeeded"), ("finalizer", "remove")]
# A resync slow enough that none falls inside a test which counts writes.
QUIET = {"resync_interval_seconds": 5}


async def started(make_reconciler: fakes.MakeReconciler, **settings: object) -> reconciler.Reconciler:
    sched = make_reconciler(**settings)
    assert await sched.recover() == 0
    assert sched.ready
    return sched


def phase_of(run_store: fakes.FakeRunStore, name: str) -> models.Phase:
    return run_store.last(name).status.phase


async def running_gated(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    name: str,
    **settings: object,
) -> tuple[reconciler.Reconciler, asyncio.Event]:
    """A started scheduler with run ``name`` Running until the returned gate is set."""
    sched = await started(make_reconciler, **settings)
    gate = scripted_runner.gate(name)
    run_store.add(name)
    await fakes.eventually(lambda: phase_of(run_store, name) is models.Phase.RUNNING, what=f"{name} to run")
    return sched, gate


async def busy_and_queued(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    busy: str,
    queued: str,
) -> tuple[reconciler.Reconciler, asyncio.Event]:
    """A scheduler with one slot: ``busy`` holds it until the returned gate is set, ``queued`` waits."""
    sched, gate = await running_gated(make_reconciler, run_store, scripted_runner, busy, max_concurrent_runs=1, **QUIET)
    run_store.add(queued)
    await fakes.eventually(lambda: run_store.object(queued).status.reason == "Queued", what=f"{queued} to queue")
    return sched, gate


async def finished(run_store: fakes.FakeRunStore, name: str, *, timeout: float = 5.0) -> models.AgentRunStatus:
    """Wait until the run is terminal and our finalizer is gone."""

    def done() -> bool:
        run = run_store.last(name)
        return run.status.phase.terminal and not run.has_finalizer

    await fakes.eventually(done, what=f"{name} to finish and let go", timeout=timeout)
    return run_store.last(name).status


async def test_pending_run_runs_then_succeeds_with_writes_in_order(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, **QUIET)
    gate = scripted_runner.gate("a")
    run_store.add("a")

    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")
    running = run_store.object("a")
    assert running.has_finalizer
    assert running.status.runner is not None
    assert running.status.runner.instance == "test"
    assert sched.active_count == 1
    gate.set()
    status = await finished(run_store, "a")

    assert run_store.writes_of("a") == HAPPY_WRITES
    assert (status.phase, status.reason, status.output) == (models.Phase.SUCCEEDED, "Succeeded", "done")
    assert [event.type for event in status.events] == ["run_started", "run_succeeded"]
    assert status.session_snapshot is not None
    assert run_store.refusals == []
    await sched.settle()
    assert ("a", "Normal", "Started") in run_store.events
    assert ("a", "Normal", "Succeeded") in run_store.events
    assert sched.active_count == 0


async def test_stale_versions_of_a_released_run_cause_no_writes(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, **QUIET)
    run_store.add("a")
    await finished(run_store, "a")
    # The watch can still deliver versions from before the run ended and let go.
    current = run_store.object("a")
    stale_terminal = dataclasses.replace(current, finalizers=(models.FINALIZER,), resource_version="1")
    stale_running = dataclasses.replace(
        stale_terminal, status=current.status.model_copy(update={"phase": models.Phase.RUNNING})
    )

    sched.observe(stale_terminal)
    sched.observe(stale_running)
    await sched.settle()

    assert run_store.writes_of("a") == HAPPY_WRITES
    assert run_store.refusals == []


async def test_echo_run_through_the_task_runner(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    sched = make_reconciler(task_runner)
    await sched.recover()
    run_store.add("hello", fakes.echo_spec("Say hello to the platform team."))

    status = await finished(run_store, "hello")

    assert status.phase is models.Phase.SUCCEEDED
    assert status.output == "echo: Say hello to the platform team."
    assert status.usage is not None
    assert status.usage.requests == 1
    types = [event.type for event in status.events]
    assert types == ["run_started", "model_request", "run_succeeded"]
    assert [event.id for event in status.events] == [1, 2, 3]
    assert run_store.writes_of("hello")[0] == ("finalizer", "add")
    assert run_store.writes_of("hello")[-2:] == [("status", "Succeeded"), ("finalizer", "remove")]


FAILURES = [
    pytest.param(
        fakes.echo_spec(["", " "]), "InvalidRequest", "run.user_prompts must not be empty", id="blank-prompts"
    ),
    pytest.param(
        {
            "composition": {
                "layers": [
                    {"name": "llm", "type": "model.echo"},
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "x"}},
                    {
                        "name": "output",
                        "type": "agentrun.output",
                        "config": {
                            "jsonSchema": {
                                "type": "object",
                                "properties": {"n": {"$ref": "#/$defs/N"}},
                                "$defs": {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}}},
                            }
                        },
                    },
                ]
            }
        },
        "InvalidRequest",
        "Recursive $defs refs are not supported for structured output exposure.",
        id="recursive-schema",
    ),
    pytest.param(
        fakes.echo_spec(
            "again",
            sessionSnapshot={
                "layers": [
                    {"name": "llm", "lifecycleState": "suspended"},
                    {"name": "prompt", "lifecycleState": "closed"},
                ]
            },
        ),
        "InvalidRequest",
        "Layer 'prompt' is closed; CLOSED snapshots cannot be entered.",
        id="closed-snapshot",
    ),
    pytest.param(
        {
            "composition": {
                "layers": [
                    {
                        "name": "llm",
                        "type": "model.openai",
                        "config": {"model": "m", "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"}},
                    },
                    {"name": "prompt", "type": "plain.prompt", "config": {"user": "x"}},
                ]
            }
        },
        "CredentialsUnavailable",
        "Secret 'llm-credentials' with key 'api-key' was not found in namespace 'ns'",
        id="missing-secret",
    ),
    pytest.param(
        {"composition": {}}, "InvalidRequest", "spec is invalid: composition.layers: Field required", id="bad-spec"
    ),
]


async def test_a_mode_without_a_runner_fails_after_admission(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    sched = make_reconciler(runner.ModeRunner({models.RunnerMode.TASK: task_runner}))
    await sched.recover()
    run_store.add("pod", fakes.echo_spec("x", runner={"mode": "pod"}))

    status = await finished(run_store, "pod")

    message = "runner mode 'pod' is not available in this operator"
    assert (status.phase, status.reason, status.message) == (models.Phase.FAILED, "InvalidRequest", message)
    # The attempt named its Pod when it was recorded, before anything executed.
    uid = run_store.object("pod").ref.uid
    assert status.attempts[0].pod_name == models.runner_pod_name("pod", uid, 1)
    assert status.attempts[0].mode is models.RunnerMode.POD


@pytest.mark.parametrize(("spec", "reason", "message"), FAILURES)
async def test_request_shaped_problems_fail_after_admission(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    task_runner: runner.TaskRunner,
    spec: dict[str, object],
    reason: str,
    message: str,
) -> None:
    sched = make_reconciler(task_runner)
    await sched.recover()
    run_store.add("bad", spec)

    status = await finished(run_store, "bad")

    assert (status.phase, status.reason, status.message) == (models.Phase.FAILED, reason, message)
    assert [event.type for event in status.events] == ["run_started", "run_failed"]
    assert status.events[-1].data == {"reason": reason, "message": message}
    condition = status.condition(models.CONDITION_SUCCEEDED)
    assert condition is not None
    assert (condition.status, condition.reason) == (models.ConditionStatus.FALSE, reason)


async def test_conflicting_write_is_retried_from_the_stored_object(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    _, gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)

    run_store.touch("a")  # someone else moves the resourceVersion
    gate.set()
    status = await finished(run_store, "a")

    assert status.phase is models.Phase.SUCCEEDED
    assert fakes.Refusal("status", "a", "Conflict") in run_store.refusals
    assert run_store.writes_of("a") == HAPPY_WRITES


async def test_terminal_state_recorded_meanwhile_is_never_overwritten(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    _, gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)
    first = transitions.ended(
        run_store.object("a").status,
        transitions.failure(models.Reason.POD_FAILED, "recorded first"),
        generation=1,
        now=fakes.EPOCH,
        ring_size=50,
    )
    run_store.set_status("a", first)

    gate.set()
    await fakes.eventually(lambda: not run_store.object("a").has_finalizer, what="the finalizer to be released")

    stored = run_store.object("a").status
    assert (stored.phase, stored.reason, stored.message) == (models.Phase.FAILED, "PodFailed", "recorded first")
    assert stored.events == first.events
    assert run_store.status_writes_of("a") == ["Running"]
    assert fakes.Refusal("status", "a", "Conflict") in run_store.refusals


@pytest.mark.parametrize("failing", ["admission", "conclusion"])
async def test_transient_write_failures_are_retried(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    failing: str,
) -> None:
    sched = await started(make_reconciler, **QUIET)
    gate = scripted_runner.gate("a")
    if failing == "admission":
        run_store.fail_next_writes(2)
    run_store.add("a")
    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")
    if failing == "conclusion":
        run_store.fail_next_writes(2)
    gate.set()

    status = await finished(run_store, "a")

    assert status.phase is models.Phase.SUCCEEDED
    assert run_store.writes_of("a") == HAPPY_WRITES
    kind = "finalizer" if failing == "admission" else "status"
    assert run_store.refusals == [fakes.Refusal(kind, "a", "Unavailable")] * 2
    failures = sched.svc.metrics.registry.get_sample_value(
        "agentrun_status_write_failures_total", {"cause": "Unavailable"}
    )
    assert failures == 2


async def test_concurrency_cap_queues_the_second_run_until_the_first_ends(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched, gate = await busy_and_queued(make_reconciler, run_store, scripted_runner, "first", "second")
    queued = run_store.object("second")
    assert queued.status.phase is models.Phase.PENDING
    assert not queued.has_finalizer
    assert (sched.active_count, sched.queued_count) == (1, 1)
    assert scripted_runner.started == ["first"]

    gate.set()
    assert (await finished(run_store, "second")).phase is models.Phase.SUCCEEDED
    assert (await finished(run_store, "first")).phase is models.Phase.SUCCEEDED
    assert scripted_runner.started == ["first", "second"]
    order = [(w.name, w.kind, w.detail) for w in run_store.writes]
    assert order.index(("first", "status", "Succeeded")) < order.index(("second", "finalizer", "add"))
    assert run_store.writes_of("second") == [("status", "Pending"), *HAPPY_WRITES]
    assert (sched.active_count, sched.queued_count) == (0, 0)


async def test_deleting_a_running_run_cancels_it_and_lets_it_go(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, **QUIET)
    scripted_runner.gate("a")  # never opened: only the deletion ends it
    run_store.add("a")
    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")

    run_store.delete("a")
    await fakes.eventually(lambda: not run_store.exists("a"), what="the object to be deleted")

    status = run_store.last("a").status
    assert (status.phase, status.reason, status.message) == (
        models.Phase.CANCELLED,
        "Cancelled",
        decisions.DELETED_MESSAGE,
    )
    assert status.events[-1].type == "run_cancelled"
    assert scripted_runner.cancelled == ["a"]
    assert run_store.writes_of("a") == [
        ("finalizer", "add"),
        ("status", "Running"),
        ("status", "Cancelled"),
        ("finalizer", "remove"),
    ]
    await fakes.eventually(lambda: sched.active_count == 0, what="the slot to be freed")


async def test_a_run_deleted_while_no_instance_led_records_the_cancellation(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    run_store.add("held", status=running_status("other", NOW), finalizers=(models.FINALIZER,))
    run_store.delete("held")  # its owner lost the Lease; nobody leads yet
    sched = make_reconciler(clock=fakes.Clock(NOW))
    assert await sched.recover() == 0  # cancelled for the deletion, not failed as an orphan

    await fakes.eventually(lambda: not run_store.exists("held"), what="the object to be deleted")

    assert run_store.last("held").status.phase is models.Phase.CANCELLED
    assert run_store.writes_of("held") == [("status", "Cancelled"), ("finalizer", "remove")]


async def test_deleting_a_queued_run_drops_it_from_the_queue(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, max_concurrent_runs=1, **QUIET)
    scripted_runner.gate("busy")
    run_store.add("busy")
    await fakes.eventually(lambda: phase_of(run_store, "busy") is models.Phase.RUNNING, what="busy to run")
    run_store.add("waiting")
    await fakes.eventually(lambda: sched.queued_count == 1, what="waiting to be queued")

    run_store.delete("waiting")  # no finalizer yet: gone at once

    await fakes.eventually(lambda: sched.queued_count == 0, what="the queue to forget it")
    assert not run_store.exists("waiting")
    assert scripted_runner.started == ["busy"]


async def test_timeout_fails_the_run_with_deadline_exceeded(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    sched = make_reconciler(task_runner)
    await sched.recover()
    run_store.add("slow", fakes.echo_spec("slow", delay=60, timeoutSeconds=1))

    status = await finished(run_store, "slow", timeout=10)

    assert (status.phase, status.reason) == (models.Phase.FAILED, "DeadlineExceeded")
    assert status.message == "run exceeded its deadline of 1 seconds"
    assert status.events[-1].type == "run_failed"


async def test_progress_is_coalesced_into_one_write(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    gate = scripted_runner.gate("a")
    scripted_runner.scripts["a"].progress = [("tool_call", {"tool": name}) for name in ("search", "fetch", "read")]
    run_store.add("a")

    await fakes.eventually(lambda: run_store.object("a").status.event_count == 4, what="the progress write")
    assert run_store.status_writes_of("a") == ["Running", "Running"]
    events = run_store.object("a").status.events
    assert [(e.id, e.type) for e in events] == [
        (1, "run_started"),
        (2, "tool_call"),
        (3, "tool_call"),
        (4, "tool_call"),
    ]
    assert [e.data for e in events[1:]] == [{"tool": "search"}, {"tool": "fetch"}, {"tool": "read"}]

    gate.set()
    status = await finished(run_store, "a")
    assert [e.id for e in status.events] == [1, 2, 3, 4, 5]
    assert status.event_count == 5


async def test_a_long_attempt_without_progress_makes_no_writes(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler)  # progress interval 0.05 s
    gate = scripted_runner.gate("a")
    run_store.add("a")
    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")
    writes = list(run_store.writes_of("a"))

    # The owner's liveness is its Lease: twenty progress intervals pass without a write.
    await asyncio.sleep(20 * sched.svc.settings.progress_interval_seconds)
    assert run_store.writes_of("a") == writes
    gate.set()
    assert (await finished(run_store, "a")).phase is models.Phase.SUCCEEDED


async def test_runner_failure_is_recorded_with_its_reason(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(failure=errors.ModelError("model 'm' returned HTTP 429: slow down"))
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason, status.message) == (
        models.Phase.FAILED,
        "ModelError",
        "model 'm' returned HTTP 429: slow down",
    )
    assert run_store.writes_of("a") == [*HAPPY_WRITES[:2], ("status", "Failed"), ("finalizer", "remove")]


async def test_large_output_is_offloaded(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, status_budget_bytes=1024, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(output={"text": "x" * 2000})
    run_store.add("a")

    status = await finished(run_store, "a")

    assert status.phase is models.Phase.SUCCEEDED
    assert status.output is None
    assert status.output_ref is not None
    assert status.output_ref.name == "a-output-uid-1"
    assert run_store.payloads["a-output-uid-1"] == '{"text":"' + "x" * 2000 + '"}'
    assert status.events[-1].data is not None
    assert "output" not in status.events[-1].data


# --- shutdown ---------------------------------------------------------------------------


async def test_drain_keeps_short_results_and_fails_long_runs(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, **QUIET)
    short = scripted_runner.gate("short")
    scripted_runner.gate("long")
    run_store.add("short")
    run_store.add("long")
    await fakes.eventually(lambda: sched.active_count == 2, what="both runs to be admitted")
    await fakes.eventually(
        lambda: {phase_of(run_store, "short"), phase_of(run_store, "long")} == {models.Phase.RUNNING},
        what="both runs to be Running",
    )

    draining = asyncio.create_task(sched.drain(1.0))
    await fakes.eventually(lambda: not sched.ready, what="the drain to begin")
    short.set()  # finishes within the grace
    await asyncio.wait_for(draining, timeout=5)

    kept = run_store.last("short").status
    assert (kept.phase, kept.output) == (models.Phase.SUCCEEDED, "done")
    failed = run_store.last("long")
    assert (failed.status.phase, failed.status.reason, failed.status.message) == (
        models.Phase.FAILED,
        "OperatorShutdown",
        "run cancelled during operator shutdown",
    )
    assert failed.status.events[-1].type == "run_failed"
    assert not failed.has_finalizer
    assert scripted_runner.cancelled == ["long"]
    assert sched.active_count == 0

    # Runs seen after the drain began are left Pending for the next instance.
    late = run_store.add("late")
    sched.observe(late)
    await sched.settle()
    assert run_store.writes_of("late") == []
    assert (sched.active_count, sched.queued_count) == (0, 0)


async def test_drain_leaves_queued_runs_for_the_next_instance(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched, gate = await busy_and_queued(make_reconciler, run_store, scripted_runner, "busy", "queued")

    draining = asyncio.create_task(sched.drain(1.0))
    await fakes.eventually(lambda: not sched.ready, what="the drain to begin")
    gate.set()
    await asyncio.wait_for(draining, timeout=5)

    assert phase_of(run_store, "busy") is models.Phase.SUCCEEDED
    waiting = run_store.object("queued")
    assert waiting.status.phase is models.Phase.PENDING
    assert not waiting.has_finalizer
    assert scripted_runner.started == ["busy"]


# --- recovery ---------------------------------------------------------------------------


def running_status(instance: str, started: datetime.datetime | None) -> models.AgentRunStatus:
    """A Running status owned by ``instance``; ``None`` means it never recorded a time at all."""
    runner_status = models.RunnerStatus(mode=models.RunnerMode.TASK, instance=instance)
    if started is None:
        return models.AgentRunStatus(phase=models.Phase.RUNNING, reason="Running", runner=runner_status)
    return transitions.admitted(models.AgentRunStatus(), runner=runner_status, generation=1, now=started, ring_size=50)


NOW = fakes.EPOCH + datetime.timedelta(hours=1)

# Recovery runs once this instance holds the leader Lease: whoever recorded a Running
# run has stopped acting, however recently it wrote (see decisions.owner_alive).
RECOVERY = [
    pytest.param("gone", NOW - datetime.timedelta(minutes=10), True, id="another-instance-long-ago"),
    pytest.param("other", NOW - datetime.timedelta(seconds=0.5), True, id="another-instance-just-now"),
    pytest.param("test", NOW, True, id="our-own-name-but-not-in-memory"),
    pytest.param("gone", None, True, id="no-start-time-at-all"),
]


@pytest.mark.parametrize(("owner", "started", "orphaned"), RECOVERY)
async def test_recover_fails_orphans_only(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    owner: str,
    started: datetime.datetime | None,
    orphaned: bool,
) -> None:
    run_store.add("running", status=running_status(owner, started), finalizers=(models.FINALIZER,))
    sched = make_reconciler(clock=fakes.Clock(NOW))

    assert await sched.recover() == int(orphaned)
    await sched.settle()

    run = run_store.last("running")
    if orphaned:
        assert (run.status.phase, run.status.reason) == (models.Phase.FAILED, "OperatorRestarted")
        assert f"the operator instance {owner} that ran this run stopped" in (run.status.message or "")
        assert run.status.events[-1].type == "run_failed"
        assert run_store.writes_of("running") == [("status", "Failed"), ("finalizer", "remove")]
        assert ("running", "Warning", "OperatorRestarted") in run_store.events
    else:
        assert run.status.phase is models.Phase.RUNNING
        assert run_store.writes_of("running") == []


async def test_recover_makes_no_writes_to_finished_runs(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    for phase in (models.Phase.SUCCEEDED, models.Phase.FAILED, models.Phase.CANCELLED):
        run_store.add(phase.value.lower(), status=models.AgentRunStatus(phase=phase, reason=phase.value))
    run_store.add("orphan", status=running_status("gone", fakes.EPOCH))
    sched = make_reconciler(clock=fakes.Clock(NOW))

    assert await sched.recover() == 1
    await sched.settle()

    assert {w.name for w in run_store.writes} == {"orphan"}
    # Failed, then labelled finished (the release write): the watch no longer sends it.
    assert run_store.writes_of("orphan") == [("status", "Failed"), ("finalizer", "remove")]
    assert run_store.last("orphan").labelled_finished


async def test_finished_run_still_holding_our_finalizer_is_released_without_a_status_write(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    done = models.AgentRunStatus(phase=models.Phase.SUCCEEDED, reason="Succeeded")
    run_store.add("done", status=done, finalizers=(models.FINALIZER,))
    await started(make_reconciler)

    await fakes.eventually(lambda: not run_store.object("done").has_finalizer, what="the finalizer to be released")
    assert run_store.writes_of("done") == [("finalizer", "remove")]


async def test_orphan_seen_late_that_finished_meanwhile_is_not_failed(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    clock = fakes.Clock(NOW)
    run_store.add("foreign", status=running_status("other", NOW))
    sched = make_reconciler(clock=clock)
    stale = run_store.object("foreign")
    done = transitions.ended(
        stale.status,
        transitions.Ending(phase=models.Phase.SUCCEEDED, reason=models.Reason.SUCCEEDED, output="ok"),
        generation=1,
        now=NOW,
        ring_size=50,
    )
    run_store.set_status("foreign", done)
    await sched.recover()

    sched.observe(stale)  # a delayed watch event: the Running copy
    await sched.settle()

    assert run_store.object("foreign").status == done
    assert run_store.writes_of("foreign") == []
    assert fakes.Refusal("status", "foreign", "Conflict") in run_store.refusals


async def test_runs_seen_before_recovery_wait_untouched_until_it_is_done(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = make_reconciler(max_concurrent_runs=1, **QUIET)
    gate = scripted_runner.gate("first")
    run_store.add("first")
    run_store.add("early")
    await fakes.eventually(lambda: sched.tracked_count == 2, what="the watch to deliver the runs")
    await sched.settle()
    assert run_store.writes == []  # nothing is admitted or queued before recovery

    assert await sched.recover() == 0
    await fakes.eventually(lambda: run_store.object("early").status.reason == "Queued", what="early to queue")
    gate.set()
    assert (await finished(run_store, "first")).phase is models.Phase.SUCCEEDED
    assert (await finished(run_store, "early")).phase is models.Phase.SUCCEEDED


# --- exactly once: decoding, unknown outcomes, namesakes ----------------------------------


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param({"runner": {"mode": "task", "instance": "x", "podIP": "10.1.2.3"}}, id="unknown-nested-field"),
        pytest.param({"retryBudget": {"left": 2}}, id="unknown-top-level-field"),
        pytest.param({"usage": {"requests": "many"}}, id="unreadable-known-field"),
    ],
)
async def test_finished_run_written_by_another_version_is_never_run_again(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    odd: dict[str, object],
) -> None:
    run_store.add("done")
    run_store._bodies["ns", "done"]["status"] = {"phase": "Succeeded", "reason": "Succeeded", "output": "kept", **odd}
    sched = await started(make_reconciler, **QUIET)
    run_store.touch("done")  # one more watch notification
    await sched.settle()

    assert scripted_runner.started == []
    assert run_store.writes_of("done") == []
    assert run_store._bodies["ns", "done"]["status"]["output"] == "kept"


async def test_run_with_an_unknown_phase_is_left_alone(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    run_store.add("future", finalizers=(models.FINALIZER,))
    run_store._bodies["ns", "future"]["status"] = {"phase": "Retrying", "attempts": [{"number": 1}]}
    sched = await started(make_reconciler, **QUIET)
    run_store.touch("future")
    await sched.settle()

    assert scripted_runner.started == []
    assert run_store.writes_of("future") == []


@pytest.mark.parametrize("lost", ["finalizer", "running", "terminal", "release"])
async def test_a_write_applied_with_its_reply_lost_is_recognised_as_our_own(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    lost: str,
) -> None:
    sched = await started(make_reconciler, **QUIET)
    gate = scripted_runner.gate("a")
    if lost == "finalizer":
        run_store.lose_next_replies(1)
    elif lost == "running":
        original = run_store.set_finalizer

        async def finalizer_then_lose(run: ports.RunObject, present: bool) -> ports.RunObject | None:
            result = await original(run, present)
            if present:
                run_store.lose_next_replies(1)  # the next write, Running, is applied and its reply lost
            return result

        run_store.set_finalizer = finalizer_then_lose  # type: ignore[method-assign]
    run_store.add("a")
    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")
    if lost == "terminal":
        run_store.lose_next_replies(1)
    elif lost == "release":
        original_status = run_store.write_status

        async def terminal_then_lose(run: ports.RunObject, status: models.AgentRunStatus) -> ports.RunObject:
            result = await original_status(run, status)
            if status.phase.terminal:
                run_store.lose_next_replies(1)  # the next write, the release, is applied and its reply lost
            return result

        run_store.write_status = terminal_then_lose  # type: ignore[method-assign]
    gate.set()

    status = await finished(run_store, "a")
    await sched.settle()

    assert status.phase is models.Phase.SUCCEEDED
    assert scripted_runner.started == ["a"]
    assert [event.type for event in status.events] == ["run_started", "run_succeeded"]
    assert [(a.number, a.instance, a.reason) for a in status.attempts] == [(1, "test", "Succeeded")]
    assert fakes.Refusal("reply", "", "lost") in run_store.refusals


async def test_namesake_created_while_the_old_run_is_still_being_released_runs(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched, gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)
    old_uid = run_store.object("a").ref.uid

    def recreate(event_type: str, run: ports.RunObject) -> None:
        # `kubectl replace --force`: the new object exists as soon as the old one is gone,
        # while the operator still waits for the reply of the write that let the old one go.
        if event_type == "DELETED" and run.ref.uid == old_uid:
            run_store.add("a")

    run_store.watch(recreate)
    original = run_store.set_finalizer

    async def release_then_lose(run: ports.RunObject, present: bool) -> ports.RunObject | None:
        result = await original(run, present)
        if not present:
            raise ports.Unavailable("injected: the reply of the release was lost")
        return result

    run_store.set_finalizer = release_then_lose  # type: ignore[method-assign]
    run_store.delete("a")
    await fakes.eventually(lambda: run_store.exists("a") and run_store.object("a").ref.uid != old_uid, what="a again")
    run_store.set_finalizer = original  # type: ignore[method-assign]
    gate.set()

    status = await finished(run_store, "a")
    run_store.unwatch(recreate)
    await sched.settle()
    assert status.phase is models.Phase.SUCCEEDED
    assert scripted_runner.started == ["a", "a"]


# --- every path ends terminal ------------------------------------------------------------


async def test_layer_state_that_cannot_be_serialised_fails_the_run(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(layer_state={"handle": object()})
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InternalError")
    assert "session state is not JSON" in (status.message or "")


async def test_output_that_is_not_json_fails_the_run(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(output=float("nan"))
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InternalError")
    assert "output is not JSON" in (status.message or "")


@pytest.mark.parametrize("error", [ports.Forbidden, ports.Unavailable, ports.NotOwned])
async def test_an_offload_that_cannot_be_stored_fails_the_run_in_bounded_time(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    scripted_runner: fakes.ScriptedRunner,
    monkeypatch: pytest.MonkeyPatch,
    error: type[ports.ApiError],
) -> None:
    monkeypatch.setattr(ending, "OFFLOAD_TIMEOUT_SECONDS", 0.5)
    await started(make_reconciler, status_budget_bytes=1024, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(output="x" * 2000)
    run_store.fail_next_payloads(1000, error)
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "ResultNotStored")
    assert f"injected {error.__name__}" in (status.message or "")


async def test_a_rejected_terminal_status_is_replaced_by_a_minimal_one(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    _sched, gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)
    run_store.fail_next_writes(1, ports.Rejected)
    gate.set()

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InternalError")
    assert "rejected its status" in (status.message or "")


async def test_a_terminal_status_that_could_not_be_written_is_retried_by_the_resync(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched, gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)
    run_store.fail_next_writes(2, ports.Rejected)  # the real status and the minimal one
    gate.set()
    await fakes.eventually(lambda: len(run_store.refusals) == 2, what="both writes to be refused")
    await sched.settle()
    assert phase_of(run_store, "a") is models.Phase.RUNNING

    await sched.resync()
    status = await finished(run_store, "a")
    assert (status.phase, status.reason) == (models.Phase.SUCCEEDED, "Succeeded")


async def test_a_timeout_inside_the_agent_is_not_the_runs_deadline(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(failure=TimeoutError())
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InternalError")
    assert "None" not in (status.message or "")


async def test_a_run_without_a_timeout_gets_the_operators_default_deadline(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, default_timeout_seconds=0.3, **QUIET)
    scripted_runner.gate("a")
    run_store.add("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "DeadlineExceeded")
    assert status.message == "run exceeded its deadline of 0.3 seconds"


async def test_a_forgotten_run_of_this_instance_is_found_by_the_resync(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    clock = fakes.Clock(NOW)
    sched = await started(make_reconciler, clock=clock, **QUIET)
    # Recorded as this instance's own, yet nothing here executes it (its task died with a bug).
    run_store.add("a", status=running_status("test", NOW), finalizers=(models.FINALIZER,))
    await sched.settle()
    await sched.resync()

    status = await finished(run_store, "a")
    assert (status.phase, status.reason) == (models.Phase.FAILED, "OperatorRestarted")
    assert scripted_runner.started == []


# --- cancellation by request ---------------------------------------------------------------


async def test_cancel_request_stops_a_running_run(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    _sched, _gate = await running_gated(make_reconciler, run_store, scripted_runner, "a", **QUIET)
    run_store._bodies["ns", "a"]["spec"]["cancel"] = True
    run_store.touch("a")

    status = await finished(run_store, "a")

    assert (status.phase, status.reason, status.message) == (
        models.Phase.CANCELLED,
        "Cancelled",
        "run cancelled by request",
    )
    assert status.events[-1].type == "run_cancelled"
    assert scripted_runner.cancelled == ["a"]


async def test_cancel_request_keeps_a_queued_run_from_ever_starting(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched, gate = await busy_and_queued(make_reconciler, run_store, scripted_runner, "busy", "waiting")
    run_store._bodies["ns", "waiting"]["spec"]["cancel"] = True
    run_store.touch("waiting")
    status = await finished(run_store, "waiting")
    gate.set()
    await finished(run_store, "busy")
    await sched.settle()

    assert (status.phase, status.reason) == (models.Phase.CANCELLED, "Cancelled")
    assert status.attempts == []
    assert scripted_runner.started == ["busy"]


# --- retries and expiry ----------------------------------------------------------------------


def unavailable_model() -> errors.ModelError:
    return errors.ModelError("model 'm' returned HTTP 503: overloaded", status_code=503)


async def test_a_retry_starts_after_its_backoff_without_waiting_for_a_watch_copy(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)  # the resync (5 s) is too slow to pass this test
    scripted_runner.scripts["a"] = fakes.Script(fail_first=[unavailable_model()])
    gate = scripted_runner.gate("a")
    run_store.add("a", fakes.echo_spec(retry={"limit": 1, "backoffSeconds": 0.1}))
    await fakes.eventually(lambda: phase_of(run_store, "a") is models.Phase.RUNNING, what="a to run")
    # From here the watch is silent, as when the copy of the retry's write arrived while the
    # attempt was still finishing: the attempt's own ending must schedule the next one.
    run_store.silence_watch()
    gate.set()

    status = await finished(run_store, "a", timeout=2.0)
    assert [(a.number, a.reason) for a in status.attempts] == [(1, "ModelError"), (2, "Succeeded")]


async def test_transient_failures_are_retried_until_the_run_succeeds(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    sched = await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(fail_first=[unavailable_model(), unavailable_model()])
    run_store.add("a", fakes.echo_spec(retry={"limit": 3, "backoffSeconds": 0.1}))

    status = await finished(run_store, "a")
    await sched.settle()

    assert (status.phase, status.reason) == (models.Phase.SUCCEEDED, "Succeeded")
    assert [(a.number, a.reason, a.status_code) for a in status.attempts] == [
        (1, "ModelError", 503),
        (2, "ModelError", 503),
        (3, "Succeeded", None),
    ]
    assert [e.type for e in status.events] == [
        "run_started", "attempt_failed", "attempt_started", "attempt_failed", "attempt_started", "run_succeeded",
    ]  # fmt: skip
    assert scripted_runner.started == ["a", "a", "a"]
    # The finalizer is held across the backoffs: added once, released once.
    assert [w for w in run_store.writes_of("a") if w[0] == "finalizer"] == [
        ("finalizer", "add"),
        ("finalizer", "remove"),
    ]
    assert sched.svc.metrics.registry.get_sample_value("agentrun_retries_total", {"reason": "ModelError"}) == 2


async def test_a_client_error_of_the_model_is_not_retried(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    await started(make_reconciler, **QUIET)
    bad_request = errors.ModelError("model 'm' returned HTTP 400: bad request", status_code=400)
    scripted_runner.scripts["a"] = fakes.Script(fail_first=[bad_request])
    run_store.add("a", fakes.echo_spec(retry={"limit": 3, "backoffSeconds": 0.1}))

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "ModelError")
    assert [(a.number, a.status_code) for a in status.attempts] == [(1, 400)]


async def test_a_restart_during_backoff_resumes_the_same_schedule(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    clock = fakes.Clock(NOW)
    first = await started(make_reconciler, clock=clock, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(fail_first=[unavailable_model()])
    run_store.add("a", fakes.echo_spec(retry={"limit": 1, "backoffSeconds": 60}))
    await fakes.eventually(lambda: run_store.object("a").status.reason == "RetryBackoff", what="the backoff")
    scheduled = run_store.object("a").status.next_attempt_time
    assert scheduled is not None
    assert NOW + datetime.timedelta(seconds=30) <= scheduled <= NOW + datetime.timedelta(seconds=60)
    await first.drain(0.1)  # the instance stops during the backoff
    await first.close()

    second = await started(make_reconciler, clock=clock, instance="next", **QUIET)
    clock.advance((scheduled - NOW).total_seconds() - 1)
    await second.resync()
    await second.settle()
    assert run_store.object("a").status.reason == "RetryBackoff"  # not restarted early
    assert run_store.object("a").status.next_attempt_time == scheduled  # nor rescheduled
    clock.advance(1)
    await second.resync()

    status = await finished(run_store, "a")
    assert [(a.number, a.reason) for a in status.attempts] == [(1, "ModelError"), (2, "Succeeded")]


async def test_an_orphan_is_retried_when_its_retry_policy_allows(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    status = running_status("gone", datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
    run_store.add(
        "a", fakes.echo_spec(retry={"limit": 1, "backoffSeconds": 0.1}), status=status, finalizers=(models.FINALIZER,)
    )
    sched = make_reconciler(**QUIET)  # the real clock: the backoff passes
    await sched.recover()

    retried = await finished(run_store, "a")
    assert (retried.phase, retried.reason) == (models.Phase.SUCCEEDED, "Succeeded")
    assert [(a.number, a.reason) for a in retried.attempts] == [(1, "OperatorRestarted"), (2, "Succeeded")]


async def test_a_finished_run_is_deleted_once_its_time_to_live_passes(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    sched = await started(make_reconciler, **QUIET)
    run_store.add("short", fakes.echo_spec(ttlSecondsAfterFinished=0))
    run_store.add("kept", fakes.echo_spec(ttlSecondsAfterFinished=3600))

    await fakes.eventually(lambda: not run_store.exists("short"), what="the expired run to be deleted")
    status = run_store.last("short").status
    assert status.phase is models.Phase.SUCCEEDED
    await finished(run_store, "kept")
    await sched.settle()
    assert run_store.exists("kept")
    assert sched.tracked_count == 0  # finished runs cost no entry, only their expiry time
    assert len(sched.expiry) == 1
    assert sched.svc.metrics.registry.get_sample_value("agentrun_ttl_deletions_total") == 1


async def test_finished_runs_of_before_a_restart_expire_from_their_completion_time(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    done = models.AgentRunStatus(phase=models.Phase.SUCCEEDED, reason="Succeeded", completion_time=NOW)
    run_store.add("old", fakes.echo_spec(ttlSecondsAfterFinished=60), status=done)
    clock = fakes.Clock(NOW + datetime.timedelta(seconds=59))
    sched = await started(make_reconciler, clock=clock, **QUIET)
    await sched.settle()
    assert run_store.exists("old")

    clock.advance(1)
    sched.expiry.schedule(run_store.object("old").ref, clock())  # the timer's wake-up, without waiting for it
    await fakes.eventually(lambda: not run_store.exists("old"), what="the expired run to be deleted")
    assert run_store.writes_of("old") == [("delete", "")]


async def test_a_new_leader_finds_the_finished_runs_to_expire_by_listing_them(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore
) -> None:
    # Finished runs are not watched: only the listing of runs labelled finished finds them.
    done = models.AgentRunStatus(phase=models.Phase.SUCCEEDED, reason="Succeeded", completion_time=NOW)
    run_store.add("kept", status=done)
    run_store.add("expiring", fakes.echo_spec(ttlSecondsAfterFinished=60), status=done)
    run_store.add("unlabelled", fakes.echo_spec(ttlSecondsAfterFinished=60), status=done)
    for name in ("kept", "expiring"):
        run_store._bodies["ns", name]["metadata"]["labels"] = {models.FINISHED_LABEL: "true"}
    sched = make_reconciler(clock=fakes.Clock(NOW + datetime.timedelta(seconds=61)), **QUIET)

    assert await sched.expiry.sweep() == 1  # "expiring"; "kept" has no time to live
    sched.start()
    await fakes.eventually(lambda: not run_store.exists("expiring"), what="the expired run to be deleted")
    assert run_store.exists("kept")


@pytest.mark.parametrize(
    ("asked", "ceiling", "effective"),
    [
        pytest.param(None, None, None, id="none"),
        pytest.param({"maxRequests": 5}, None, {"maxRequests": 5}, id="no-ceiling"),
        pytest.param(None, {"maxTotalTokens": 1000}, {"maxTotalTokens": 1000}, id="ceiling-applies-to-runs-without"),
        pytest.param({"maxTotalTokens": 5000}, {"maxTotalTokens": 1000}, {"maxTotalTokens": 1000}, id="capped"),
        pytest.param({"maxTotalTokens": 10}, {"maxTotalTokens": 1000}, {"maxTotalTokens": 10}, id="lower-kept"),
        pytest.param(
            {"maxRequests": 3}, {"maxToolCalls": 4}, {"maxRequests": 3, "maxToolCalls": 4}, id="different-limits-merge"
        ),
    ],
)
def test_the_operators_ceiling_caps_every_runs_budgets(
    asked: dict[str, int] | None, ceiling: dict[str, int] | None, effective: dict[str, int] | None
) -> None:
    def limits(wire: dict[str, int] | None) -> models.Limits | None:
        return None if wire is None else models.Limits.model_validate(wire)

    assert runner.effective_limits(limits(asked), limits(ceiling)) == limits(effective)


# --- agents ----------------------------------------------------------------------------------

AGENT_SPEC = {
    "description": "echoes",
    "composition": {
        "layers": [
            {"name": "llm", "type": "model.echo"},
            {"name": "prompt", "type": "plain.prompt", "config": {"user": "from the agent"}},
        ]
    },
    "defaults": {"timeoutSeconds": 120},
}


async def test_a_run_records_the_agent_it_was_admitted_with(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    run_store.put_agent("echoer", AGENT_SPEC, generation=3)
    await make_reconciler(task_runner, **QUIET).recover()
    overrides = {"layers": [{"name": "prompt", "type": "plain.prompt", "config": {"user": "from the run"}}]}
    run_store.add("a", {"agentRef": {"name": "echoer"}, "composition": overrides})

    status = await finished(run_store, "a")

    assert (status.phase, status.output) == (models.Phase.SUCCEEDED, "echo: from the run")
    assert status.agent is not None
    assert (status.agent.name, status.agent.generation) == ("echoer", 3)
    assert status.agent.spec.defaults.timeout_seconds == 120


async def test_an_agent_edited_during_a_run_changes_nothing_for_it(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> None:
    run_store.put_agent("echoer", AGENT_SPEC, generation=1)
    sched = await started(make_reconciler, **QUIET)
    scripted_runner.scripts["a"] = fakes.Script(fail_first=[unavailable_model()])
    run_store.add("a", {"agentRef": {"name": "echoer"}, "retry": {"limit": 1, "backoffSeconds": 0.1}})
    await fakes.eventually(lambda: run_store.object("a").status.reason == "RetryBackoff", what="the backoff")
    edited = {**AGENT_SPEC, "defaults": {"timeoutSeconds": 1}}
    run_store.put_agent("echoer", edited, generation=2)

    status = await finished(run_store, "a")
    await sched.settle()

    assert status.phase is models.Phase.SUCCEEDED
    assert status.agent is not None
    assert status.agent.generation == 1  # the second attempt ran the Agent as admitted
    assert len(status.attempts) == 2


async def test_a_missing_agent_fails_the_run_with_a_clear_message(
    make_reconciler: fakes.MakeReconciler, run_store: fakes.FakeRunStore, task_runner: runner.TaskRunner
) -> None:
    await make_reconciler(task_runner, **QUIET).recover()
    run_store.add("a", {"agentRef": {"name": "nobody"}})

    status = await finished(run_store, "a")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "InvalidRequest")
    assert status.message is not None
    assert status.message.startswith("Agent 'nobody' was not found in namespace 'ns'")
