"""Pod mode under the reconciler, with an in-memory Pod API: creation, adoption, outcomes, stop and detach."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import fakes
import pytest

from agentrun.api import models
from agentrun.layers import registry
from agentrun.pods import adapter, protocol, spec
from agentrun.runtime import ports, reconciler, runner, transitions

NOW = fakes.EPOCH + datetime.timedelta(hours=1)
POD_SPEC = fakes.echo_spec("hi", runner={"mode": "pod"})
"""Never mutated: the fake store keeps the dict it is given, so tests pass it through ``pod_spec()``."""


def pod_spec() -> dict[str, Any]:
    return copy.deepcopy(POD_SPEC)


RUNNING = ports.PodState(phase="Running", container=ports.ContainerState(running=True))


def event_line(seq: int, event_type: str = "model_request", data: dict[str, Any] | None = None) -> str:
    at = NOW + datetime.timedelta(seconds=seq)
    return protocol.event_line(protocol.Event(seq, event_type, at, data or {"request": seq}))


def success_line(output: str = "echo: hi", events: int = 1) -> str:
    snapshot = models.SessionSnapshot(
        layers=[
            models.LayerSnapshot(name="llm", lifecycle_state=models.LifecycleState.SUSPENDED),
            models.LayerSnapshot(name="prompt", lifecycle_state=models.LifecycleState.SUSPENDED),
        ]
    )
    return protocol.result_line(
        protocol.Result(
            protocol.SUCCEEDED, output=output, usage=models.Usage(requests=1), session_snapshot=snapshot, events=events
        )
    )


class FakePod:
    """A runner Pod whose log and state the test writes."""

    def __init__(self, manifest: Mapping[str, Any], state: ports.PodState = RUNNING) -> None:
        self.manifest = manifest
        self.state = state
        self.lines: list[str] = []
        self.finished = False
        self.changed = asyncio.Event()
        self.flush_on_sigterm = True

    def write(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.changed.set()

    def end(self, exit_code: int = 0, reason: str = "Completed", phase: str = "Succeeded") -> None:
        container = ports.ContainerState(exit_code=exit_code, terminated_reason=reason)
        self.state = dataclasses.replace(self.state, phase=phase, container=container)
        self.finished = True
        self.changed.set()


class FakePodApi:
    """The pod runner's port in memory: Pods run only as far as the test scripts them."""

    def __init__(self) -> None:
        self.pods: dict[str, FakePod] = {}
        self.secrets: dict[str, str] = {}
        self.created: list[str] = []
        self.deleted: list[tuple[str, int]] = []
        self.create_error: ports.ApiError | None = None
        self.initial_state = RUNNING

    def pod(self, name: str) -> FakePod:
        return self.pods[name]

    async def put_run_secret(self, run: ports.RunObject, name: str, key: str, payload: str) -> None:
        self.secrets[name] = payload

    async def create_pod(self, manifest: Mapping[str, Any]) -> None:
        if self.create_error is not None:
            raise self.create_error
        name = manifest["metadata"]["name"]
        if name in self.pods:
            raise ports.Conflict(f"pod {name} exists")
        self.created.append(name)
        self.pods[name] = FakePod(manifest, self.initial_state)

    async def read_pod(self, namespace: str, name: str) -> ports.PodState:
        if name not in self.pods:
            raise ports.NotFound(f"pod {name}")
        return self.pods[name].state

    async def pod_owner_uid(self, namespace: str, name: str) -> str | None:
        return str(self.pods[name].manifest["metadata"]["ownerReferences"][0]["uid"])

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int) -> None:
        self.deleted.append((name, grace_seconds))
        pod = self.pods.get(name)
        if pod is not None and not pod.finished and pod.flush_on_sigterm:
            # The runner got SIGTERM: it prints what it has, a cancelled result, and exits.
            pod.write(protocol.result_line(protocol.Result(protocol.CANCELLED, message="stopped")))
            pod.end(exit_code=0)

    async def pod_log(self, namespace: str, name: str) -> AsyncIterator[str]:
        pod = self.pods.get(name)
        if pod is None:
            raise ports.NotFound(f"pod {name}")
        seen = 0
        while True:
            while seen < len(pod.lines):
                seen += 1
                yield pod.lines[seen - 1]
            if pod.finished:
                return
            pod.changed.clear()
            await pod.changed.wait()


@pytest.fixture
def pod_api() -> FakePodApi:
    return FakePodApi()


@pytest.fixture
def make_pod_reconciler(
    make_reconciler: fakes.MakeReconciler,
    run_store: fakes.FakeRunStore,
    layer_registry: registry.LayerRegistry,
    pod_api: FakePodApi,
) -> Any:
    def make(**settings: Any) -> reconciler.Reconciler:
        tasks = runner.TaskRunner(layer_registry, run_store)
        config = fakes.settings(runner_image="agentrun:test", runner_start_timeout_seconds=0.3, **settings)
        pods = adapter.PodRunner(tasks, pod_api, adapter.settings_from(config), lambda: NOW)
        modes = runner.ModeRunner({models.RunnerMode.TASK: tasks, models.RunnerMode.POD: pods})
        return make_reconciler(modes, clock=fakes.Clock(NOW), **settings)

    return make


async def finished(run_store: fakes.FakeRunStore, name: str) -> models.AgentRunStatus:
    await fakes.eventually(
        lambda: run_store.last(name).status.phase.terminal and not run_store.last(name).has_finalizer,
        what=f"{name} to finish and be released",
    )
    return run_store.last(name).status


async def pod_created(pod_api: FakePodApi, count: int = 1) -> FakePod:
    await fakes.eventually(lambda: len(pod_api.created) >= count, what="the runner Pod to be created")
    return pod_api.pod(pod_api.created[count - 1])


async def test_an_attempt_names_its_pod_before_creating_it_and_records_the_result(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    sched = make_pod_reconciler()
    await sched.recover()
    uid = run_store.add("hello", pod_spec()).ref.uid
    pod = await pod_created(pod_api)
    name = models.runner_pod_name("hello", uid, 1)
    assert pod.manifest["metadata"]["name"] == name
    # The attempt was recorded with the Pod's name in the write that made the run Running.
    assert run_store.object("hello").status.attempts[0].pod_name == name
    secret = spec.input_secret_name("hello", uid)
    assert json.loads(pod_api.secrets[secret])["spec"]["composition"]["layers"][1]["config"]["user"] == "hi"

    pod.write("a library's log line", event_line(1), success_line())
    pod.end()
    status = await finished(run_store, "hello")

    assert (status.phase, status.output) == (models.Phase.SUCCEEDED, "echo: hi")
    assert [event.type for event in status.events] == ["run_started", "model_request", "run_succeeded"]
    assert run_store.writes_of("hello") == [
        ("finalizer", "add"),
        ("status", "Running"),
        ("status", "Succeeded"),
        ("finalizer", "remove"),
    ]
    assert pod_api.deleted == []  # a finished Pod is kept for its logs; it goes with the run


def adopted_status(owner: str, *, recorded: int, pod_name: str) -> models.AgentRunStatus:
    """A pod-mode run its owner left Running long ago, with ``recorded`` runner events already in status."""
    runner_status = models.RunnerStatus(mode=models.RunnerMode.POD, instance=owner)
    started = NOW - datetime.timedelta(minutes=10)
    status = transitions.admitted(
        models.AgentRunStatus(), runner=runner_status, generation=1, now=started, ring_size=50, pod_name=pod_name
    )
    events = [
        transitions.PendingEvent("model_request", NOW + datetime.timedelta(seconds=seq), {"request": seq}, seq)
        for seq in range(1, recorded + 1)
    ]
    return transitions.progressed(status, events, now=started, ring_size=50)


async def test_an_orphaned_pod_is_adopted_and_followed_without_duplicate_events(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    placeholder = run_store.add("orphan", pod_spec(), finalizers=(models.FINALIZER,))
    pod_name = models.runner_pod_name("orphan", placeholder.ref.uid, 1)
    run_store.set_status("orphan", adopted_status("gone", recorded=2, pod_name=pod_name))
    owner = {"metadata": {"ownerReferences": [{"uid": placeholder.ref.uid}]}}
    pod_api.pods[pod_name] = FakePod(owner)
    pod = pod_api.pod(pod_name)
    pod.write(event_line(1), event_line(2), event_line(3, "tool_call", {"tool": "t"}))

    sched = make_pod_reconciler()
    assert await sched.recover() == 0  # adopted, not failed
    await fakes.eventually(
        lambda: run_store.object("orphan").status.runner.instance == "test",  # type: ignore[union-attr]
        what="the adoption",
    )
    pod.write(success_line(events=3))
    pod.end()
    status = await finished(run_store, "orphan")

    assert status.phase is models.Phase.SUCCEEDED
    types = [event.type for event in status.events]
    assert types == ["run_started", "model_request", "model_request", "tool_call", "run_succeeded"]
    assert [event.id for event in status.events] == [1, 2, 3, 4, 5]
    assert status.attempts[0].instance == "gone"  # the attempt that ran is the one the other instance started
    assert pod_api.created == []  # never a second Pod for the same attempt
    assert run_store.writes_of("orphan") == [("status", "Running"), ("status", "Succeeded"), ("finalizer", "remove")]


async def test_a_pod_that_finished_while_no_operator_ran_is_recorded_on_adoption(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    placeholder = run_store.add("done", pod_spec(), finalizers=(models.FINALIZER,))
    pod_name = models.runner_pod_name("done", placeholder.ref.uid, 1)
    run_store.set_status("done", adopted_status("gone", recorded=0, pod_name=pod_name))
    pod_api.pods[pod_name] = FakePod({"metadata": {"ownerReferences": [{"uid": placeholder.ref.uid}]}})
    pod_api.pod(pod_name).write(event_line(1), success_line("echo: while away"))
    pod_api.pod(pod_name).end()

    await make_pod_reconciler().recover()
    status = await finished(run_store, "done")

    assert (status.phase, status.output) == (models.Phase.SUCCEEDED, "echo: while away")
    assert [event.type for event in status.events] == ["run_started", "model_request", "run_succeeded"]


async def test_an_adopted_attempt_whose_pod_is_gone_fails_podfailed_and_no_pod_is_created(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    placeholder = run_store.add("lost", pod_spec(), finalizers=(models.FINALIZER,))
    pod_name = models.runner_pod_name("lost", placeholder.ref.uid, 1)
    run_store.set_status("lost", adopted_status("gone", recorded=0, pod_name=pod_name))

    await make_pod_reconciler().recover()
    status = await finished(run_store, "lost")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "PodFailed")
    assert pod_name in (status.message or "")
    assert "gone" in (status.message or "")
    assert pod_api.created == []


async def test_an_oomkilled_pod_fails_podfailed_with_its_masked_last_log_lines(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("hungry", pod_spec())
    pod = await pod_created(pod_api)
    pod.write(event_line(1), "allocating a lot", "Authorization: Bearer sk-secretsecretsecretsecret")
    pod.end(exit_code=137, reason="OOMKilled", phase="Failed")
    status = await finished(run_store, "hungry")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "PodFailed")
    message = status.message or ""
    assert "OOMKilled" in message
    assert pod_api.created[0] in message
    assert "allocating a lot" in message
    assert "sk-secret" not in message


async def test_the_runner_failure_keeps_its_reason(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("rate-limited", pod_spec())
    pod = await pod_created(pod_api)
    failed = protocol.Result(protocol.FAILED, reason="ModelError", message="HTTP 400 from the model", status_code=400)
    pod.write(protocol.result_line(failed))
    pod.end()
    status = await finished(run_store, "rate-limited")

    assert (status.phase, status.reason, status.message) == (
        models.Phase.FAILED,
        "ModelError",
        "HTTP 400 from the model",
    )
    assert status.attempts[0].status_code == 400


async def test_cancel_deletes_the_pod_with_a_grace_period_and_records_cancelled(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("stop-me", pod_spec())
    pod = await pod_created(pod_api)
    pod.write(event_line(1))
    await fakes.eventually(lambda: len(run_store.object("stop-me").status.events) == 2, what="progress recorded")

    body = run_store._bodies[fakes.NAMESPACE, "stop-me"]
    body["spec"]["cancel"] = True
    run_store._bump(body)
    status = await finished(run_store, "stop-me")

    assert (status.phase, status.reason) == (models.Phase.CANCELLED, "Cancelled")
    assert pod_api.deleted == [(pod_api.created[0], spec.TERMINATION_GRACE_SECONDS)]
    assert status.events[-1].type == "run_cancelled"


async def test_drain_detaches_from_pods_without_a_write(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("keeps-running", pod_spec())
    await pod_created(pod_api)
    await fakes.eventually(lambda: sched.active_count == 1, what="the attempt to run")
    before = list(run_store.writes_of("keeps-running"))

    await asyncio.wait_for(sched.drain(5.0), timeout=3)

    assert run_store.writes_of("keeps-running") == before
    assert run_store.object("keeps-running").status.phase is models.Phase.RUNNING
    assert pod_api.deleted == []


async def test_a_missing_runtime_class_fails_closed(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    pod_api.create_error = ports.Forbidden('pods "x" is forbidden: pod rejected: RuntimeClass "gvisor" not found')
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("isolated", fakes.echo_spec("hi", runner={"mode": "pod", "runtimeClassName": "gvisor"}))
    status = await finished(run_store, "isolated")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "IsolationUnavailable")
    assert "RuntimeClass 'gvisor' does not exist" in (status.message or "")


async def test_an_unpullable_image_fails_within_the_bound_naming_the_image(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    pod_api.initial_state = ports.PodState(
        phase="Pending",
        container=ports.ContainerState(waiting_reason="ImagePullBackOff", waiting_message="no such host"),
    )
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("no-image", fakes.echo_spec("hi", runner={"mode": "pod", "image": "nowhere/none:1"}))
    status = await finished(run_store, "no-image")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "ImageUnavailable")
    assert "'nowhere/none:1'" in (status.message or "")
    assert "ImagePullBackOff" in (status.message or "")
    assert pod_api.deleted == [(pod_api.created[0], 0)]


async def test_a_pod_never_scheduled_ends_at_the_deadline_with_the_schedulers_message(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    pod_api.initial_state = ports.PodState(
        phase="Pending", unschedulable="0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add(
        "nowhere", fakes.echo_spec("hi", runner={"mode": "pod", "nodeSelector": {"pool": "gpu"}}, timeoutSeconds=1)
    )
    status = await finished(run_store, "nowhere")

    assert (status.phase, status.reason) == (models.Phase.FAILED, "DeadlineExceeded")
    assert status.message == (
        "run exceeded its deadline of 1 seconds; the runner Pod was never scheduled: "
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )
    assert pod_api.deleted == [(pod_api.created[0], 0)]


async def test_a_new_namespaces_missing_service_account_is_waited_for(
    make_pod_reconciler: Any, run_store: fakes.FakeRunStore, pod_api: FakePodApi
) -> None:
    pod_api.create_error = ports.Forbidden('pods "x" is forbidden: error looking up service account ns/default')
    sched = make_pod_reconciler()
    await sched.recover()
    run_store.add("early", pod_spec())
    await fakes.eventually(lambda: run_store.object("early").status.phase is models.Phase.RUNNING, what="admission")
    pod_api.create_error = None  # the ServiceAccount appeared
    pod = await pod_created(pod_api)
    pod.write(success_line())
    pod.end()
    assert (await finished(run_store, "early")).phase is models.Phase.SUCCEEDED
