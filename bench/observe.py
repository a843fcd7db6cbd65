"""What the benchmark sees of the process under test: its writes, and the runs' changes.

Writes come from the API server's audit log, never from the operator's own word. The
log grows to hundreds of thousands of entries in a full run (seeding alone writes
20,000), so it is read incrementally and only the entries of the identities under test
are parsed and kept.

Changes of runs come from a watch, each stamped with the local time it was seen: the
failover and heartbeat scenarios need every intermediate state of a run, which the
final object alone does not show.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Any

from kubernetes_asyncio import client, watch

GROUP, VERSION, PLURAL = "agentrun.dev", "v1alpha1", "agentruns"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
TERMINAL_EVENTS = ("run_succeeded", "run_failed", "run_cancelled")


@dataclasses.dataclass(frozen=True)
class Write:
    user: str
    namespace: str
    name: str
    verb: str
    resource: str  # with its subresource: "agentruns/status"
    code: int

    @property
    def key(self) -> str:
        """ "verb resource[ refused-code]", the shape the writes-by-request tables use."""
        return f"{self.verb} {self.resource}" + (f" {self.code}" if self.code >= 400 else "")

    @property
    def counts_as_run_write(self) -> bool:
        """An accepted write to an AgentRun; Kubernetes Events and refused writes are reported apart."""
        return self.resource.startswith("agentruns") and self.code < 400


class AuditLog:
    """The writes of some identities, read from the audit log as it grows."""

    def __init__(self, path: pathlib.Path | None, users: tuple[str, ...]) -> None:
        self._path = path
        self._users = users
        self._offset = 0
        self._by_namespace: dict[str, list[Write]] = collections.defaultdict(list)

    def _catch_up(self) -> None:
        if self._path is None or not self._path.exists():
            return
        with self._path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += complete
        needles = [user.encode() for user in self._users]
        for line in chunk[:complete].splitlines():
            if not any(needle in line for needle in needles):  # cheap test before parsing
                continue
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if entry.get("stage") != "ResponseComplete" or entry["user"]["username"] not in self._users:
                continue
            resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            write = Write(
                user=entry["user"]["username"],
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                verb=entry["verb"],
                resource=resource,
                code=int(entry["responseStatus"]["code"]),
            )
            self._by_namespace[write.namespace].append(write)

    def writes(self, namespace: str, user: str) -> list[Write]:
        """Every write ``user`` made in ``namespace`` so far, oldest first."""
        self._catch_up()
        return [write for write in self._by_namespace.get(namespace, []) if write.user == user]

    def counts(self, namespace: str, user: str) -> collections.Counter[str]:
        return collections.Counter(write.key for write in self.writes(namespace, user))


@dataclasses.dataclass(frozen=True)
class Sighting:
    resource_version: str
    seen: float  # time.time() when the watch delivered it
    phase: str | None
    instance: str | None  # status.runner.instance: the operator that owns the run
    terminal_events: int  # run_succeeded/run_failed/run_cancelled entries in status.events
    event_count: int
    start_time: str | None
    heartbeat_time: str | None


class RunObserver:
    """Every state a watch shows of the runs in one namespace, in order, per run name."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self._custom = custom
        self._namespace = namespace
        self.sightings: dict[str, list[Sighting]] = collections.defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunObserver:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _record(self, item: dict[str, Any]) -> None:
        status = item.get("status") or {}
        runner = status.get("runner") or {}
        sighting = Sighting(
            resource_version=item["metadata"]["resourceVersion"],
            seen=time.time(),
            phase=status.get("phase"),
            instance=runner.get("instance"),
            terminal_events=sum(1 for event in status.get("events") or [] if event.get("type") in TERMINAL_EVENTS),
            event_count=int(status.get("eventCount") or 0),
            start_time=status.get("startTime"),
            heartbeat_time=runner.get("heartbeatTime"),
        )
        history = self.sightings[item["metadata"]["name"]]
        if not history or history[-1].resource_version != sighting.resource_version:  # listed, then watched
            history.append(sighting)

    async def _watch(self) -> None:
        resource_version = None
        while True:
            if resource_version is None:
                listing = await self._custom.list_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL)
                for item in listing["items"]:
                    self._record(item)
                resource_version = listing["metadata"]["resourceVersion"]
            stream = watch.Watch()
            try:
                async with stream.stream(
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self._namespace,
                    PLURAL,
                    resource_version=resource_version,
                    timeout_seconds=30,
                ) as events:
                    async for event in events:
                        if event["type"] == "DELETED":
                            continue
                        self._record(event["object"])
                        resource_version = event["object"]["metadata"]["resourceVersion"]
            except client.exceptions.ApiException as error:
                if error.status != 410:
                    raise
                resource_version = None  # expired: list again

    def latest(self, name: str) -> Sighting | None:
        history = self.sightings.get(name)
        return history[-1] if history else None

    def first(self, name: str, phase: str) -> Sighting | None:
        return next((s for s in self.sightings.get(name, []) if s.phase == phase), None)

    def terminal_transitions(self, name: str) -> int:
        """How often the run was seen entering a terminal phase: more than once means it ended twice."""
        count, previous = 0, None
        for sighting in self.sightings.get(name, []):
            if sighting.phase in TERMINAL and sighting.phase != previous:
                count += 1
            previous = sighting.phase
        return count

    async def wait_for(self, names: list[str], phases: tuple[str, ...], limit: float) -> list[str]:
        """Wait until every run was last seen in one of ``phases``; returns those that were not by ``limit``."""
        deadline = time.monotonic() + limit
        while True:
            missing = [n for n in names if (s := self.latest(n)) is None or s.phase not in phases]
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.02)
