"""In-memory fakes of the runtime's ports, and the helpers the unit tier shares.

``FakeRunStore`` behaves like the API server as :class:`agentrun.runtime.ports.RunApi`
sees it: objects live as wire bodies, every write bumps a global resourceVersion,
guarded writes at a stale resourceVersion raise ``Conflict``, missing objects raise
``NotFound``, removing the last finalizer of a deleting object deletes it, and watchers
receive each new version of an object asynchronously, as a watch stream delivers it.
It can also apply a write and then drop the reply, as a broken connection does.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agentrun import settings as settings_module
from agentrun.api import models
from agentrun.kube import store as kube_store
from agentrun.layers import compositor
from agentrun.runtime import ports, progress, reconciler

NAMESPACE = "ns"
EPOCH = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)

Watcher = Callable[[str, ports.RunObject], None]
"""Receives ``(event type, object)``: ``ADDED``, ``MODIFIED`` or ``DELETED``."""

MakeReconciler = Callable[..., reconciler.Reconciler]
"""Builds a reconciler wired to the fake store (the ``make_reconciler`` fixture)."""


def settings(**overrides: Any) -> settings_module.Settings:
    """Operator settings with small, explicit timings for the unit tier."""
    values: dict[str, Any] = {
        "instance": "test",
        "resync_interval_seconds": 0.2,
        "progress_interval_seconds": 0.05,
        "liveness_port": 0,
        "metrics_port": 0,
    }
    values.update(overrides)
    return settings_module.Settings(**values)


def echo_spec(user: str | list[str] = "hi", *, delay: float = 0.0, **fields: Any) -> dict[str, Any]:
    """A wire-format spec with the offline echo model and one prompt layer."""
    echo: dict[str, Any] = {"name": "llm", "type": "model.echo"}
    if delay:
        echo["config"] = {"delaySeconds": delay}
    return {
        "composition": {"layers": [echo, {"name": "prompt", "type": "plain.prompt", "config": {"user": user}}]},
        **fields,
    }


async def eventually(predicate: Callable[[], bool], *, what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclasses.dataclass(frozen=True)
class Write:
    """One write the store accepted: a status (``detail`` is the phase) or a finalizer change."""

    kind: str
    name: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    """One write the store refused, and why."""

    kind: str
    name: str
    error: str


class FakeRunStore:
    """An in-memory API server for AgentRuns, faithful to the RunStore contract."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self._gone: dict[tuple[str, str], dict[str, Any]] = {}
        self._revision = itertools.count(1)
        self._uids = itertools.count(1)
        self._created = itertools.count(1)
        self._failures: list[ports.ApiError] = []
        self._lost_replies = 0
        self._payload_failures: list[ports.ApiError] = []
        self._watchers: list[Watcher] = []
        self._silenced = False
        self.writes: list[Write] = []
        self.refusals: list[Refusal] = []
        self.events: list[tuple[str, str, str]] = []
        self.payloads: dict[str, str] = {}
        self.secrets: dict[tuple[str, str, str], str] = {}
        self.agents: dict[tuple[str, str], ports.AgentObject] = {}
        self.threads: dict[tuple[str, str], dict[str, Any]] = {}
        """AgentThread bodies, by namespace and name."""
        self.reads = 0

    # --- what tests do to the store ---------------------------------------------------

    def add(
        self,
        name: str,
        spec: dict[str, Any] | None = None,
        *,
        status: models.AgentRunStatus | None = None,
        finalizers: tuple[str, ...] = (),
        namespace: str = NAMESPACE,
    ) -> ports.RunObject:
        """Create an object, as ``kubectl apply`` would."""
        key = (namespace, name)
        assert key not in self._bodies, f"{namespace}/{name} exists already"
        body: dict[str, Any] = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{next(self._uids)}",
                "generation": 1,
                "resourceVersion": str(next(self._revision)),
                "creationTimestamp": (EPOCH + datetime.timedelta(seconds=next(self._created))).isoformat(),
                "finalizers": list(finalizers),
            },
            "spec": spec if spec is not None else echo_spec(),
        }
        if status is not None:
            body["status"] = status.to_wire()
        self._bodies[key] = body
        self._notify("ADDED", body)
        return self.object(name, namespace)

    def object(self, name: str, namespace: str = NAMESPACE) -> ports.RunObject:
        """The object as stored now; KeyError if it is gone."""
        return ports.RunObject.from_body(copy.deepcopy(self._bodies[namespace, name]))

    def last(self, name: str, namespace: str = NAMESPACE) -> ports.RunObject:
        """The object as stored now, or as it was when it was deleted."""
        key = (namespace, name)
        body = self._bodies.get(key) or self._gone[key]
        return ports.RunObject.from_body(copy.deepcopy(body))

    def exists(self, name: str, namespace: str = NAMESPACE) -> bool:
        return (namespace, name) in self._bodies

    def set_status(self, name: str, status: models.AgentRunStatus, namespace: str = NAMESPACE) -> None:
        """Another writer replaces the status (not recorded as one of our writes)."""
        body = self._bodies[namespace, name]
        body["status"] = status.to_wire()
        self._bump(body)

    def touch(self, name: str, namespace: str = NAMESPACE) -> None:
        """Another client changes metadata: only the resourceVersion moves for us."""
        body = self._bodies[namespace, name]
        annotations = body["metadata"].setdefault("annotations", {})
        annotations["touched"] = str(int(annotations.get("touched", "0")) + 1)
        self._bump(body)

    def delete(self, name: str, namespace: str = NAMESPACE) -> None:
        """``kubectl delete``: finalizers hold the object with a deletionTimestamp, else it is gone."""
        key = (namespace, name)
        body = self._bodies[key]
        if body["metadata"]["finalizers"]:
            body["metadata"]["deletionTimestamp"] = "2025-01-01T12:00:00Z"
            self._bump(body)
        else:
            self._remove(key)

    def fail_next_writes(self, count: int, error: type[ports.ApiError] = ports.Unavailable) -> None:
        """The next ``count`` status or finalizer writes fail with ``error``."""
        self._failures.extend(error(f"injected {error.__name__}") for _ in range(count))

    def fail_next_payloads(self, count: int, error: type[ports.ApiError] = ports.Unavailable) -> None:
        """The next ``count`` offloads of a payload fail with ``error``."""
        self._payload_failures.extend(error(f"injected {error.__name__}") for _ in range(count))

    def lose_next_replies(self, count: int) -> None:
        """The next ``count`` status or finalizer writes are applied, then their reply is lost."""
        self._lost_replies += count

    def watch(self, watcher: Watcher) -> None:
        """Deliver every object as it is now, then each change, like a watch stream."""
        self._watchers.append(watcher)
        for body in self._bodies.values():
            self._deliver(watcher, "ADDED", body)

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.remove(watcher)

    def silence_watch(self) -> None:
        """From now on changes reach no watcher (as if the stream lagged for ever)."""
        self._silenced = True

    def writes_of(self, name: str) -> list[tuple[str, str]]:
        return [(write.kind, write.detail) for write in self.writes if write.name == name]

    def status_writes_of(self, name: str) -> list[str]:
        return [detail for kind, detail in self.writes_of(name) if kind == "status"]

    # --- the RunStore protocol -----------------------------------------------------------

    async def get(self, ref: ports.RunRef) -> ports.RunObject:
        await asyncio.sleep(0)
        self.reads += 1
        body = self._bodies.get((ref.namespace, ref.name))
        if body is None:
            raise ports.NotFound(f"AgentRun {ref} not found")
        return ports.RunObject.from_body(copy.deepcopy(body))

    def put_agent(self, name: str, spec: dict[str, Any], *, generation: int = 1, namespace: str = NAMESPACE) -> None:
        """Create or edit an Agent."""
        parsed = models.AgentSpec.model_validate(spec)
        self.agents[namespace, name] = ports.AgentObject(name, f"agent-uid-{name}", generation, parsed)

    async def get_agent(self, namespace: str, name: str) -> ports.AgentObject:
        await asyncio.sleep(0)
        agent = self.agents.get((namespace, name))
        if agent is None:
            raise ports.NotFound(f"Agent {namespace}/{name} not found")
        return agent

    def add_thread(self, name: str, strategy: str = "enqueue", *, namespace: str = NAMESPACE) -> None:
        """Create an AgentThread, as ``kubectl apply`` would."""
        self.threads[namespace, name] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"thread-uid-{name}",
                "generation": 1,
                "resourceVersion": str(next(self._revision)),
            },
            "spec": {"multitaskStrategy": strategy},
            "status": {},
        }

    def thread(self, name: str, namespace: str = NAMESPACE) -> ports.ThreadObject:
        return ports.ThreadObject.from_body(copy.deepcopy(self.threads[namespace, name]))

    async def get_thread(self, namespace: str, name: str) -> ports.ThreadObject:
        await asyncio.sleep(0)
        if (namespace, name) not in self.threads:
            raise ports.NotFound(f"AgentThread {namespace}/{name} not found")
        return self.thread(name, namespace)

    async def write_thread_status(
        self, thread: ports.ThreadObject, status: models.AgentThreadStatus
    ) -> ports.ThreadObject:
        await asyncio.sleep(0)
        body = self.threads.get((thread.namespace, thread.name))
        if body is None:
            raise ports.NotFound(f"AgentThread {thread.namespace}/{thread.name} not found")
        if body["metadata"]["resourceVersion"] != thread.resource_version:
            raise ports.Conflict(f"AgentThread {thread.namespace}/{thread.name} was modified")
        body["status"] = status.to_wire()
        body["metadata"]["resourceVersion"] = str(next(self._revision))
        self.writes.append(Write("thread", thread.name, status.phase.value))
        return self.thread(thread.name, thread.namespace)

    async def store_thread_history(self, thread: ports.ThreadObject, payload: str) -> models.ContentRef:
        await asyncio.sleep(0)
        name = f"{thread.name}-history-{thread.uid[:8]}"
        self.payloads[name] = payload
        self.secrets[thread.namespace, name, "history.json"] = payload
        return models.ContentRef(kind="Secret", name=name, key="history.json", size_bytes=len(payload.encode()))

    async def list_running(self) -> list[ports.RunObject]:
        await asyncio.sleep(0)
        return [
            ports.RunObject.from_body(copy.deepcopy(body))
            for body in self._bodies.values()
            if (body.get("status") or {}).get("phase") == models.Phase.RUNNING.value
        ]

    async def finished_runs(self) -> AsyncIterator[ports.RunObject]:
        for body in list(self._bodies.values()):
            await asyncio.sleep(0)
            if (body["metadata"].get("labels") or {}).get(models.FINISHED_LABEL) == "true":
                yield ports.RunObject.from_body(copy.deepcopy(body))

    async def write_status(self, run: ports.RunObject, status: models.AgentRunStatus) -> ports.RunObject:
        await asyncio.sleep(0)
        body = self._guarded("status", run)
        # A merge patch of the fields the operator owns: others (from another version) are kept.
        stored = body.setdefault("status", {})
        for name, value in status.to_wire().items():
            stored[name] = value
        for name, field in models.AgentRunStatus.model_fields.items():
            wire = field.alias or name
            if wire not in status.to_wire():
                stored.pop(wire, None)
        self._bump(body)
        self.writes.append(Write("status", run.ref.name, status.phase.value))
        self._drop_reply()
        return ports.RunObject.from_body(copy.deepcopy(body))

    def _drop_reply(self) -> None:
        if self._lost_replies:
            self._lost_replies -= 1
            self.refusals.append(Refusal("reply", "", "lost"))
            raise ports.Unavailable("injected: the connection dropped after the write was applied")

    async def set_finalizer(self, run: ports.RunObject, present: bool) -> ports.RunObject | None:
        await asyncio.sleep(0)
        try:
            body = self._guarded("finalizer", run)
        except ports.NotFound:
            return None
        metadata = body["metadata"]
        others = [f for f in metadata["finalizers"] if f != models.FINALIZER]
        if present and "deletionTimestamp" in metadata and models.FINALIZER not in metadata["finalizers"]:
            self.refusals.append(Refusal("finalizer", run.ref.name, "Rejected"))
            raise ports.Rejected("no new finalizers can be added if the object is being deleted")
        metadata["finalizers"] = [*others, models.FINALIZER] if present else others
        if not present and run.status.phase.terminal:
            metadata.setdefault("labels", {})[models.FINISHED_LABEL] = "true"
        self.writes.append(Write("finalizer", run.ref.name, "add" if present else "remove"))
        if "deletionTimestamp" in metadata and not metadata["finalizers"]:
            snapshot = copy.deepcopy(body)
            self._remove((run.ref.namespace, run.ref.name))
            self._drop_reply()
            return ports.RunObject.from_body(snapshot)
        self._bump(body)
        self._drop_reply()
        return ports.RunObject.from_body(copy.deepcopy(body))

    async def delete_run(self, ref: ports.RunRef) -> None:
        await asyncio.sleep(0)
        body = self._bodies.get((ref.namespace, ref.name))
        if body is None or body["metadata"]["uid"] != ref.uid:
            raise ports.NotFound(f"AgentRun {ref} not found")
        self.writes.append(Write("delete", ref.name, ""))
        self.delete(ref.name, ref.namespace)

    async def store_payload(self, run: ports.RunObject, purpose: str, payload: str) -> models.ContentRef:
        await asyncio.sleep(0)
        if self._payload_failures:
            raise self._payload_failures.pop(0)
        name = kube_store.payload_secret_name(run, purpose)
        self.payloads[name] = payload
        return models.ContentRef(kind="Secret", name=name, key=f"{purpose}.json", size_bytes=len(payload.encode()))

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        await asyncio.sleep(0)
        value = self.secrets.get((namespace, name, key))
        if value is None:
            raise ports.NotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return value

    async def post_kube_event(
        self, run: ports.RunObject, event_type: ports.KubeEventType, reason: str, message: str, now: datetime.datetime
    ) -> None:
        await asyncio.sleep(0)
        self.events.append((run.ref.name, event_type.value, reason))

    # --- internals ----------------------------------------------------------------------

    def _guarded(self, kind: str, run: ports.RunObject) -> dict[str, Any]:
        body = self._bodies.get((run.ref.namespace, run.ref.name))
        if body is None:
            self.refusals.append(Refusal(kind, run.ref.name, "NotFound"))
            raise ports.NotFound(f"AgentRun {run.ref} not found")
        if self._failures:
            failure = self._failures.pop(0)
            self.refusals.append(Refusal(kind, run.ref.name, type(failure).__name__))
            raise failure
        if body["metadata"]["resourceVersion"] != run.resource_version:
            self.refusals.append(Refusal(kind, run.ref.name, "Conflict"))
            raise ports.Conflict(f"AgentRun {run.ref} was modified")
        return body

    def _bump(self, body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = str(next(self._revision))
        self._notify("MODIFIED", body)

    def _remove(self, key: tuple[str, str]) -> None:
        body = self._bodies.pop(key)
        self._gone[key] = body
        self._notify("DELETED", body)

    def _notify(self, event_type: str, body: dict[str, Any]) -> None:
        for watcher in self._watchers:
            self._deliver(watcher, event_type, body)

    def _deliver(self, watcher: Watcher, event_type: str, body: dict[str, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, no watch stream
        snapshot = copy.deepcopy(body)

        def deliver() -> None:
            if watcher in self._watchers and not self._silenced:
                watcher(event_type, ports.RunObject.from_body(snapshot))

        loop.call_soon(deliver)


@dataclasses.dataclass
class Script:
    """How the fake runner executes one run."""

    gate: asyncio.Event | None = None
    """When set, the run waits for it before finishing."""
    failure: BaseException | None = None
    """Raised instead of finishing: a classified RunFailure, or any other exception."""
    fail_first: list[BaseException] = dataclasses.field(default_factory=list)
    """Raised by the first executions, one each; later executions finish."""
    output: Any = "done"
    layer_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The runtime state every layer leaves in the session snapshot."""
    progress: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)


class ScriptedRunner:
    """A Runner that follows a per-run :class:`Script` and records what happened."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    def gate(self, name: str) -> asyncio.Event:
        """Make run ``name`` wait until the returned event is set."""
        gate = asyncio.Event()
        self.scripts[name] = dataclasses.replace(self.scripts.get(name, Script()), gate=gate)
        return gate

    async def execute(self, run: ports.RunObject, sink: progress.ProgressSink) -> compositor.CompositionResult:
        name = run.ref.name
        script = self.scripts.get(name, Script())
        self.started.append(name)
        for event_type, data in script.progress:
            sink.emit(event_type, data)
        try:
            if script.gate is not None:
                await script.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        if script.failure is not None:
            raise script.failure
        if script.fail_first:
            raise script.fail_first.pop(0)
        self.finished.append(name)
        spec = run.effective_spec
        layers = spec.composition.layers if spec and spec.composition else []
        return compositor.CompositionResult(
            output=script.output,
            usage=models.Usage(requests=1, input_tokens=3, output_tokens=2),
            session_snapshot=models.SessionSnapshot(
                layers=[
                    models.LayerSnapshot(
                        name=layer.name,
                        lifecycle_state=models.LifecycleState.SUSPENDED,
                        runtime_state=script.layer_state,
                    )
                    for layer in layers
                ]
            ),
        )


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime.datetime = EPOCH) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)
