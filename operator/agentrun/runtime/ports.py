"""What the runtime needs from the API server, as a port.

:mod:`agentrun.kube.store` implements :class:`RunApi` against a real API server;
unit tests implement it in memory. Objects cross this boundary already parsed.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import pydantic

from agentrun.api import models


class ApiError(Exception):
    """Base of the errors the API port raises; the message never carries a secret value."""


class Conflict(ApiError):
    """The object changed since it was read (resourceVersion mismatch), or already exists."""


class NotFound(ApiError):
    """The object no longer exists."""


class Gone(NotFound):
    """A watch's resourceVersion has expired (HTTP 410): read the object again and resume."""


class Forbidden(ApiError):
    """The operator's ServiceAccount lacks a permission; retrying will not help until RBAC changes."""


class Rejected(ApiError):
    """The API server refused the request as invalid; retrying the same request will not help."""


class Unavailable(ApiError):
    """The API server could not be reached, timed out, or answered 429/5xx; retry with backoff.

    The request may or may not have been applied: the caller must read before it concludes.
    """


class NotOwned(ApiError):
    """An object with the name the operator needs exists and belongs to someone else; it is never touched."""


@dataclasses.dataclass(frozen=True, order=True)
class RunRef:
    """Identifies one AgentRun object; the uid tells a re-created namesake apart."""

    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunRef:
        metadata = body.get("metadata") or {}
        return cls(str(metadata.get("namespace", "")), str(metadata.get("name", "")), str(metadata.get("uid", "")))


@dataclasses.dataclass(frozen=True)
class RunObject:
    """An AgentRun as the runtime sees it."""

    ref: RunRef
    resource_version: str
    generation: int | None
    finalizers: tuple[str, ...]
    deleting: bool
    status: models.AgentRunStatus
    status_problems: tuple[str, ...] = ()
    """Status fields this version could not read (they are kept as stored, never rewritten blindly)."""
    created: datetime.datetime | None = None
    """``metadata.creationTimestamp``: the order of runs in a thread's queue."""
    labelled_finished: bool = False
    """Carries the ``agentrun.dev/finished`` label: the operator has let go of it for good."""
    raw_spec: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """The spec as stored; parsed on first use, since most watch notifications never need it."""

    @functools.cached_property
    def _parsed_spec(self) -> tuple[models.AgentRunSpec | None, str | None]:
        try:
            return models.AgentRunSpec.model_validate(self.raw_spec), None
        except pydantic.ValidationError as error:
            return None, "spec is invalid: " + "; ".join(
                f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
                for item in error.errors(include_input=False, include_url=False)
            )

    @property
    def spec(self) -> models.AgentRunSpec | None:
        """The parsed spec, or ``None`` when it is invalid (see ``spec_error``)."""
        return self._parsed_spec[0]

    @property
    def spec_error(self) -> str | None:
        return self._parsed_spec[1]

    @functools.cached_property
    def effective_spec(self) -> models.AgentRunSpec | None:
        """The spec with the Agent it was admitted with applied (see :func:`models.resolve`)."""
        spec = self.spec
        if spec is None:
            return None
        return models.resolve(spec, self.status.agent.spec if self.status.agent else None)

    @property
    def cancel_requested(self) -> bool:
        """``spec.cancel`` is true (read without parsing the whole spec)."""
        return self.raw_spec.get("cancel") is True

    @property
    def phase_readable(self) -> bool:
        """False when the stored phase is one this version does not know: then the run is left alone."""
        return "phase" not in self.status_problems and "status" not in self.status_problems

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunObject:
        """Parse an object as the API server returns it. A bad spec is kept as an error."""
        metadata = body.get("metadata") or {}
        status, problems = models.AgentRunStatus.decode(body.get("status"))
        return cls(
            ref=RunRef(metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            generation=metadata.get("generation"),
            finalizers=tuple(metadata.get("finalizers") or ()),
            deleting=metadata.get("deletionTimestamp") is not None,
            status=status,
            status_problems=tuple(problems),
            created=_timestamp(metadata.get("creationTimestamp")),
            labelled_finished=(metadata.get("labels") or {}).get(models.FINISHED_LABEL) == "true",
            raw_spec=body.get("spec") or {},
        )

    @property
    def thread_name(self) -> str | None:
        """``spec.threadRef.name`` (read without parsing the whole spec)."""
        ref = self.raw_spec.get("threadRef")
        name = ref.get("name") if isinstance(ref, Mapping) else None
        return name if isinstance(name, str) and name else None

    @property
    def has_finalizer(self) -> bool:
        return models.FINALIZER in self.finalizers


def _timestamp(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class ThreadObject:
    """An AgentThread as the runtime sees it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    spec: models.AgentThreadSpec
    status: models.AgentThreadStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ThreadObject:
        metadata = body.get("metadata") or {}
        try:
            spec = models.AgentThreadSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError:
            spec = models.AgentThreadSpec()
        try:
            status = models.AgentThreadStatus.model_validate(body.get("status") or {})
        except pydantic.ValidationError:
            status = models.AgentThreadStatus()
        return cls(
            namespace=metadata.get("namespace", ""),
            name=metadata.get("name", ""),
            uid=metadata.get("uid", ""),
            resource_version=str(metadata.get("resourceVersion", "")),
            generation=metadata.get("generation"),
            spec=spec,
            status=status,
        )


@dataclasses.dataclass(frozen=True)
class AgentObject:
    """An Agent as the runtime reads it when it admits a run that names it."""

    name: str
    uid: str
    generation: int
    spec: models.AgentSpec | None
    spec_error: str | None = None


class KubeEventType(enum.StrEnum):
    """The type of a Kubernetes Event (not to be confused with the run's own status events)."""

    NORMAL = "Normal"
    WARNING = "Warning"


class RunApi(Protocol):
    """Reads and guarded writes of AgentRuns and the objects they own."""

    async def get(self, ref: RunRef) -> RunObject:
        """The current object of that name; raises NotFound. The caller compares the uid."""

    async def get_agent(self, namespace: str, name: str) -> AgentObject:
        """An Agent; raises NotFound. An Agent whose spec this version cannot read has ``spec_error``."""

    async def get_thread(self, namespace: str, name: str) -> ThreadObject:
        """An AgentThread; raises NotFound."""

    async def write_thread_status(self, thread: ThreadObject, status: models.AgentThreadStatus) -> ThreadObject:
        """Patch the thread's status if it is still at ``thread.resource_version``; raises Conflict."""

    async def store_thread_history(self, thread: ThreadObject, payload: str) -> models.ContentRef:
        """Keep a conversation too large for the thread's status in a Secret the thread owns."""

    async def list_running(self) -> list[RunObject]:
        """Every watched run whose phase is Running (for orphan recovery)."""

    def finished_runs(self) -> AsyncIterator[RunObject]:
        """The watched runs labelled finished, page by page (for their expiry; they are not watched)."""

    async def write_status(self, run: RunObject, status: models.AgentRunStatus) -> RunObject:
        """Patch the fields the operator owns if the object is still at ``run.resource_version``; raises Conflict."""

    async def set_finalizer(self, run: RunObject, present: bool) -> RunObject | None:
        """Add or remove our finalizer, guarded by resourceVersion. ``None`` if the object is gone."""

    async def delete_run(self, ref: RunRef) -> None:
        """Delete the run if it still has ``ref.uid`` (its children are garbage-collected); raises NotFound."""

    async def store_payload(self, run: RunObject, purpose: str, payload: str) -> models.ContentRef:
        """Keep a large JSON payload in a Secret owned by the run and say where it is.

        Raises NotOwned when a Secret of that name exists and is not this run's.
        """

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret; raises NotFound naming the Secret and key (never the value)."""

    async def post_kube_event(
        self, run: RunObject, event_type: KubeEventType, reason: str, message: str, now: datetime.datetime
    ) -> None:
        """Post a Kubernetes Event about the run (best effort)."""


@dataclasses.dataclass(frozen=True)
class ContainerState:
    """The runner container of a Pod, as the kubelet reports it."""

    waiting_reason: str | None = None
    waiting_message: str | None = None
    running: bool = False
    exit_code: int | None = None
    """Set once the container has terminated."""
    terminated_reason: str | None = None
    """``Completed``, ``Error``, ``OOMKilled``, ..."""
    termination_message: str | None = None


@dataclasses.dataclass(frozen=True)
class PodState:
    """What the operator reads about a runner Pod."""

    phase: str
    reason: str | None = None
    """The Pod's own reason: ``Evicted``, ``DeadlineExceeded``, ``NodeLost``, ..."""
    message: str | None = None
    deleting: bool = False
    unschedulable: str | None = None
    """The scheduler's message while the Pod cannot be scheduled."""
    disruption: str | None = None
    """Why the Pod is being disrupted (its ``DisruptionTarget`` condition): eviction, preemption, node loss."""
    container: ContainerState = dataclasses.field(default_factory=ContainerState)

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed") or self.container.exit_code is not None


class PodApi(Protocol):
    """The runner Pods and their input, for the pod runner."""

    async def put_run_secret(self, run: RunObject, name: str, key: str, payload: str) -> None:
        """Create (or update) a Secret owned by the run; raises NotOwned when someone else's has that name."""

    async def create_pod(self, manifest: Mapping[str, Any]) -> None:
        """Create a Pod; raises Conflict when one of that name exists, Forbidden when admission refuses it."""

    async def read_pod(self, namespace: str, name: str) -> PodState:
        """The Pod's state; raises NotFound."""

    async def pod_owner_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the Pod's controlling owner; raises NotFound."""

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int) -> None:
        """Delete the Pod with a grace period (its container gets SIGTERM); a missing Pod is fine."""

    def pod_log(self, namespace: str, name: str) -> AsyncIterator[str]:
        """The runner container's log from its start, line by line, following it until the container ends."""
