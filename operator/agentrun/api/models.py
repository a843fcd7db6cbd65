"""The AgentRun API as pydantic models.

These models are the API: the CRD schema, ``kubectl explain`` and the docs are
generated from them (see :mod:`agentrun.api.crd`). Python attributes are
snake_case; the wire format is camelCase, as Kubernetes APIs are.
"""

from __future__ import annotations

import datetime
import enum
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import alias_generators

from agentrun.api import schema_hints

GROUP = "agentrun.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentRun"
PLURAL = "agentruns"
SINGULAR = "agentrun"
SHORT_NAMES = ("ar",)
THREAD_KIND = "AgentThread"
THREAD_PLURAL = "agentthreads"
THREAD_SINGULAR = "agentthread"
THREAD_SHORT_NAMES = ("thread",)
AGENT_KIND = "Agent"
AGENT_PLURAL = "agents"
AGENT_SINGULAR = "agent"
CATEGORY = "agentrun-all"
"""One category lists every agentrun.dev kind (`kubectl get agentrun-all`); it is no kind's name."""

FINALIZER = f"{GROUP}/finalizer"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "agentrun-operator"
RUN_LABEL = f"{GROUP}/run"
RUN_UID_LABEL = f"{GROUP}/run-uid"
ATTEMPT_LABEL = f"{GROUP}/attempt"
FINISHED_LABEL = f"{GROUP}/finished"
"""Set (to ``"true"``) on a run the operator has finished with: it is no longer watched."""

MAX_POD_NAME = 63


def runner_pod_name(run_name: str, run_uid: str, attempt: int) -> str:
    """The runner Pod of one attempt: ``<run>-<uid prefix>-a<N>``, DNS-safe and at most 63 characters.

    The uid prefix tells the Pods of a re-created namesake apart; the same inputs always give
    the same name, so creating the Pod is idempotent.
    """
    suffix = f"-{run_uid[:5].lower()}-a{attempt}" if run_uid else f"-a{attempt}"
    label = re.sub(r"[^a-z0-9-]", "-", run_name.lower())  # a run's name may hold dots; a Pod's label may not
    stem = label[: MAX_POD_NAME - len(suffix)].strip("-")
    return f"{stem}{suffix}"


# Layer names with a fixed role in every composition.
MODEL_LAYER = "llm"
OUTPUT_LAYER = "output"

MAX_LAYERS = 32


def _timestamp(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Timestamp = Annotated[
    datetime.datetime,
    pydantic.PlainSerializer(_timestamp, return_type=str, when_used="json"),
    pydantic.Field(json_schema_extra={"format": "date-time"}),
]


class ApiModel(pydantic.BaseModel):
    """Base for every API object: camelCase on the wire, described fields."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready mapping as the API server stores it (no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- spec -------------------------------------------------------------------------


class SecretKeyRef(ApiModel):
    """A key in a Secret in the run's namespace."""

    name: str = pydantic.Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = pydantic.Field(description="Key within the Secret's data.", min_length=1, max_length=253)


class Layer(ApiModel):
    """One typed layer of a composition, entered in order."""

    name: str = pydantic.Field(
        description=(
            "Layer name, unique within the composition. `llm` is reserved for the model layer "
            "and `output` for the structured-output layer."
        ),
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    type: str = pydantic.Field(
        description=(
            "Registered layer type id, such as `plain.prompt`, `model.openai`, `model.echo` or "
            "`agentrun.output`. Unknown types fail the run, not the admission."
        ),
        min_length=1,
        max_length=253,
    )
    config: dict[str, Any] = pydantic.Field(
        default_factory=dict,
        description=(
            "Type-specific configuration, validated by the layer type when the run starts. "
            "Credentials are never inline: model layers take `apiKeySecretRef`."
        ),
        json_schema_extra=schema_hints.open_object(
            forbidden_keys={
                "apiKey": "an inline apiKey is not allowed: reference a Secret with apiKeySecretRef",
                "api_key": "an inline api_key is not allowed: reference a Secret with apiKeySecretRef",
            }
        ),
    )


class Composition(ApiModel):
    """The ordered graph of typed layers that makes up the agent."""

    layers: list[Layer] = pydantic.Field(
        description="Layers in the order they are entered. Names are unique.",
        min_length=1,
        max_length=MAX_LAYERS,
        json_schema_extra=schema_hints.map_list("name"),
    )


class LifecycleState(enum.StrEnum):
    """Where a layer is in its session lifecycle."""

    NEW = "new"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class LayerSnapshot(ApiModel):
    """The saved state of one layer between runs."""

    name: str = pydantic.Field(description="Name of the layer this state belongs to.", min_length=1)
    lifecycle_state: LifecycleState = pydantic.Field(
        description="`suspended` layers resume; `closed` and `active` layers cannot be entered."
    )
    runtime_state: dict[str, Any] = pydantic.Field(
        default_factory=dict,
        description="Layer-specific state, such as the model conversation history.",
        json_schema_extra=schema_hints.open_object(),
    )


class SessionSnapshot(ApiModel):
    """What a follow-up run passes to continue a previous run's session."""

    schema_version: Literal[1] = pydantic.Field(1, description="Snapshot format version. Only 1 exists.")
    layers: list[LayerSnapshot] = pydantic.Field(
        description="One entry per composition layer, in the composition's order."
    )


class SessionSnapshotRef(ApiModel):
    """A session snapshot stored in a Secret, as a run leaves it when it is too large for the status."""

    name: str = pydantic.Field(description="Name of the Secret in the run's namespace.", min_length=1, max_length=253)
    key: str = pydantic.Field(description="Key holding the snapshot as JSON.", min_length=1, max_length=253)


class SessionExit(enum.StrEnum):
    """What the layers do when the run ends."""

    SUSPEND = "suspend"
    CLOSE = "close"


class RunnerMode(enum.StrEnum):
    """Where the agent executes."""

    TASK = "task"
    POD = "pod"


class RetryableReason(enum.StrEnum):
    """Reasons an attempt may be retried for: failures of infrastructure, not of the request."""

    MODEL_ERROR = "ModelError"
    """The model endpoint failed transiently: HTTP 429 or 5xx, a timeout, a lost connection (never a 4xx)."""
    POD_FAILED = "PodFailed"
    """The runner Pod was lost to a disruption (eviction, preemption, node loss)."""
    OPERATOR_RESTARTED = "OperatorRestarted"
    """The operator instance that ran the attempt stopped."""
    OPERATOR_SHUTDOWN = "OperatorShutdown"
    """The attempt was cut short by the operator's shutdown drain."""
    CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
    """A Secret the run needs could not be read (for example not yet created)."""
    RESULT_NOT_STORED = "ResultNotStored"
    """The result could not be stored."""
    TOOLS_UNAVAILABLE = "ToolsUnavailable"
    """A tool server (a `tools.mcp` layer) could not be reached or stopped answering."""
    INTERNAL_ERROR = "InternalError"
    """The operator hit an unexpected error."""


DEFAULT_RETRY_ON = (RetryableReason.MODEL_ERROR, RetryableReason.POD_FAILED, RetryableReason.OPERATOR_RESTARTED)
MAX_RETRY_BACKOFF_SECONDS = 600


class RetrySpec(ApiModel):
    """When and how often a failed attempt is tried again."""

    limit: int = pydantic.Field(1, ge=0, le=20, description="Attempts after the first one, at most.")
    backoff_seconds: float = pydantic.Field(
        10.0,
        ge=0.1,
        le=MAX_RETRY_BACKOFF_SECONDS,
        description=(
            "Wait before the first retry; each further retry waits twice as long, with jitter, "
            f"capped at {MAX_RETRY_BACKOFF_SECONDS} s."
        ),
    )
    retry_on: list[RetryableReason] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        max_length=len(RetryableReason),
        description=(
            "Reasons that are retried. Default: ModelError (429, 5xx, timeouts), PodFailed, "
            "OperatorRestarted. InvalidRequest, OutputInvalid, BudgetExceeded and Cancelled are never retried."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Limits(ApiModel):
    """Budgets enforced while the run executes; exceeding one fails the run with BudgetExceeded."""

    max_requests: int | None = pydantic.Field(None, ge=1, description="Model requests, at most.")
    max_input_tokens: int | None = pydantic.Field(None, ge=1, description="Input (prompt) tokens, at most.")
    max_output_tokens: int | None = pydantic.Field(None, ge=1, description="Output (completion) tokens, at most.")
    max_total_tokens: int | None = pydantic.Field(None, ge=1, description="Input plus output tokens, at most.")
    max_tool_calls: int | None = pydantic.Field(None, ge=0, description="Successful tool calls, at most.")


class ResourceRequirements(ApiModel):
    """CPU and memory of a runner Pod's container, as Kubernetes quantities."""

    requests: dict[str, str] | None = pydantic.Field(
        None, description="What the scheduler reserves, as quantity strings, such as `{cpu: 100m, memory: 128Mi}`."
    )
    limits: dict[str, str] | None = pydantic.Field(
        None, description="Upper bounds; the container is OOM-killed above its memory limit."
    )


class Toleration(ApiModel):
    """A core/v1 Toleration: lets the runner Pod schedule onto nodes with a matching taint."""

    key: str | None = pydantic.Field(None, description="Taint key; empty with `Exists` matches every taint.")
    operator: Literal["Exists", "Equal"] | None = pydantic.Field(None, description="`Equal` (default) or `Exists`.")
    value: str | None = pydantic.Field(None, description="Taint value, with `Equal`.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = pydantic.Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = pydantic.Field(None, description="With `NoExecute`: how long the Pod stays.")


class RunnerSpec(ApiModel):
    """How the run is executed; the Pod fields apply to `pod` mode only."""

    mode: RunnerMode | None = pydantic.Field(
        None,
        description=(
            "`task` runs the agent inside the operator; `pod` runs each attempt in its own Pod. "
            "Default: the operator's default mode (the chart's `runner.defaultMode`)."
        ),
    )
    image: str | None = pydantic.Field(
        None,
        max_length=1024,
        description="Image of the runner Pod. Default: the operator's own image (the chart's `runner.image`).",
    )
    resources: ResourceRequirements | None = pydantic.Field(
        None, description="CPU and memory of the runner Pod. Default: the chart's `runner.resources`."
    )
    runtime_class_name: str | None = pydantic.Field(
        None,
        max_length=253,
        description=(
            "RuntimeClass of the runner Pod (gVisor, Kata, ...). When it does not exist the run fails with "
            "`IsolationUnavailable`; it never falls back to the default runtime."
        ),
    )
    node_selector: dict[str, str] | None = pydantic.Field(
        None, description="Node labels the runner Pod must be scheduled onto."
    )
    tolerations: list[Toleration] | None = pydantic.Field(
        None, max_length=32, description="Taints the runner Pod tolerates."
    )
    service_account_name: str | None = pydantic.Field(
        None,
        max_length=253,
        description=(
            "ServiceAccount of the runner Pod, for workload identity. Its token is still not mounted. "
            "Default: the namespace's `default` ServiceAccount, without a token."
        ),
    )


class AgentRef(ApiModel):
    """An Agent in the run's namespace."""

    name: str = pydantic.Field(description="Name of the Agent.", min_length=1, max_length=253)


class ThreadRef(ApiModel):
    """An AgentThread in the run's namespace."""

    name: str = pydantic.Field(description="Name of the AgentThread.", min_length=1, max_length=253)


class AgentRunSpec(ApiModel):
    """The desired agent run. The operator never changes the spec."""

    agent_ref: AgentRef | None = pydantic.Field(
        None,
        description=(
            "Run a reusable Agent defined in the same namespace. `composition` then overrides the "
            "Agent's layers by name: a layer with the name of one of the Agent's replaces it whole, "
            "others are added after the Agent's. The Agent's defaults apply where the run sets nothing."
        ),
    )
    composition: Composition | None = pydantic.Field(
        None,
        description="The layers that make up the agent; with `agentRef`, the layers that override or extend it.",
    )
    thread_ref: ThreadRef | None = pydantic.Field(
        None,
        description=(
            "Join a conversation: the run continues the AgentThread's history and leaves its turn there. "
            "The thread's multitaskStrategy decides what happens while another of its runs is active. "
            "Exclusive with `sessionSnapshot` and `sessionSnapshotRef`."
        ),
    )
    session_snapshot: SessionSnapshot | None = pydantic.Field(
        None,
        description="Continue a previous run's session: pass that run's `status.sessionSnapshot`.",
    )
    session_snapshot_ref: SessionSnapshotRef | None = pydantic.Field(
        None,
        description=(
            "Continue a previous run's session stored in a Secret: pass that run's "
            "`status.sessionSnapshotRef` (`name` and `key`). Exclusive with `sessionSnapshot`."
        ),
    )
    session_exit: SessionExit = pydantic.Field(
        SessionExit.SUSPEND,
        description=(
            "`suspend` (default) leaves a snapshot a follow-up run can resume; "
            "`close` ends the session so no run can continue it."
        ),
    )
    runner: RunnerSpec | None = pydantic.Field(
        None, description="Where and how the agent executes. Default: the Agent's default, else `task`."
    )
    timeout_seconds: int | None = pydantic.Field(
        None,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Wall-clock deadline from admission; the run fails with `DeadlineExceeded` past it. "
            "Without it the operator's default deadline applies."
        ),
    )
    retry: RetrySpec | None = pydantic.Field(
        None, description="Retry failed attempts whose reason is transient. Without it, the first failure is final."
    )
    limits: Limits | None = pydantic.Field(None, description="Token, request and tool-call budgets of the run.")
    ttl_seconds_after_finished: int | None = pydantic.Field(
        None,
        ge=0,
        le=365 * 24 * 3600,
        description=(
            "Delete the run and what it owns this long after it finished (after `completionTime`). "
            "Without it the operator's default applies; without either, finished runs are kept."
        ),
    )
    cancel: bool = pydantic.Field(
        False,
        description=(
            "Set to true to cancel the run: a waiting run never starts, a running one is stopped, "
            "a finished one is unchanged. The only field that may change after creation, and only "
            "from false to true."
        ),
    )

    @property
    def mode(self) -> RunnerMode:
        """Where the run executes: ``runner.mode``, or ``task``."""
        return self.mode_or(RunnerMode.TASK)

    def mode_or(self, default: RunnerMode) -> RunnerMode:
        """Where the run executes: ``runner.mode``, or the operator's ``default``."""
        return self.runner.mode if self.runner is not None and self.runner.mode is not None else default


# --- Agent ------------------------------------------------------------------------


class AgentDefaults(ApiModel):
    """Run settings an Agent gives its runs where they set none."""

    runner: RunnerSpec | None = pydantic.Field(None, description="Where and how runs of this Agent execute.")
    timeout_seconds: int | None = pydantic.Field(
        None, ge=1, le=7 * 24 * 3600, description="Wall-clock deadline of each run, from its admission."
    )
    limits: Limits | None = pydantic.Field(None, description="Token, request and tool-call budgets of each run.")
    retry: RetrySpec | None = pydantic.Field(None, description="Retry policy of each run.")
    ttl_seconds_after_finished: int | None = pydantic.Field(
        None, ge=0, le=365 * 24 * 3600, description="Delete each run this long after it finished."
    )


class AgentSpec(ApiModel):
    """A reusable agent definition: runs name it with `spec.agentRef`."""

    description: str = pydantic.Field("", max_length=4096, description="What the agent is for, for people.")
    composition: Composition = pydantic.Field(description="The layers that make up the agent.")
    defaults: AgentDefaults = pydantic.Field(
        default_factory=AgentDefaults,
        description="Run settings applied to runs that set none.",
        json_schema_extra={"default": {}},
    )


class Agent(ApiModel):
    """A reusable agent, managed in Git; AgentRuns run it with `spec.agentRef`."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentrun.dev/v1alpha1"] = pydantic.Field("agentrun.dev/v1alpha1", description="API version.")
    kind: Literal["Agent"] = pydantic.Field("Agent", description="Kind.")
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict, description="Standard object metadata.")
    spec: AgentSpec = pydantic.Field(description="The agent.")


def resolve(spec: AgentRunSpec, agent: AgentSpec | None) -> AgentRunSpec:
    """The run's spec with the Agent it names applied: overrides by layer name, the Agent's defaults.

    A run layer with the name of one of the Agent's layers replaces it whole (so a run can
    never reuse an Agent's credentials with an endpoint of its own); other run layers follow
    the Agent's. Settings the run leaves unset come from the Agent's defaults.
    """
    if agent is None:
        return spec
    overrides = {layer.name: layer for layer in (spec.composition.layers if spec.composition else [])}
    layers = [overrides.pop(layer.name, layer) for layer in agent.composition.layers]
    layers.extend(overrides.values())
    defaults = agent.defaults
    return spec.model_copy(
        update={
            "composition": Composition(layers=layers),
            "runner": spec.runner or defaults.runner,
            "timeout_seconds": spec.timeout_seconds or defaults.timeout_seconds,
            "limits": spec.limits or defaults.limits,
            "retry": spec.retry or defaults.retry,
            "ttl_seconds_after_finished": (
                spec.ttl_seconds_after_finished
                if spec.ttl_seconds_after_finished is not None
                else defaults.ttl_seconds_after_finished
            ),
        }
    )


# --- status -----------------------------------------------------------------------


class Phase(enum.StrEnum):
    """The coarse state of a run, for humans; machines read the conditions."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


class Reason(enum.StrEnum):
    """Machine-readable cause, in `status.reason` and the `Succeeded` condition."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    INVALID_REQUEST = "InvalidRequest"
    MODEL_ERROR = "ModelError"
    OUTPUT_INVALID = "OutputInvalid"
    OUTPUT_TOO_LARGE = "OutputTooLarge"
    CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    CANCELLED = "Cancelled"
    OPERATOR_SHUTDOWN = "OperatorShutdown"
    OPERATOR_RESTARTED = "OperatorRestarted"
    POD_FAILED = "PodFailed"
    """The runner Pod ended without a result: OOMKilled, evicted, its node lost, or a non-zero exit."""
    ISOLATION_UNAVAILABLE = "IsolationUnavailable"
    """The run asks for a RuntimeClass that does not exist; it never runs without the isolation it asked for."""
    IMAGE_UNAVAILABLE = "ImageUnavailable"
    """The runner Pod's image cannot be pulled; the message names the image."""
    BUDGET_EXCEEDED = "BudgetExceeded"
    THREAD_BUSY = "ThreadBusy"
    INTERRUPTED = "Interrupted"
    TOOLS_UNAVAILABLE = "ToolsUnavailable"
    """A tool server of the composition (a `tools.mcp` layer) could not be reached or stopped answering."""
    RETRY_BACKOFF = "RetryBackoff"
    RESULT_NOT_STORED = "ResultNotStored"
    INTERNAL_ERROR = "InternalError"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


CONDITION_SUCCEEDED = "Succeeded"


class StatusModel(ApiModel):
    """Base of the status types: fields this version does not know are ignored on read.

    Another operator version may have written them; the operator's writes patch only
    the fields it owns, so the API server keeps them.
    """

    model_config = pydantic.ConfigDict(extra="ignore")


class Condition(StatusModel):
    """A metav1.Condition."""

    type: str = pydantic.Field(description="Condition type. `Succeeded` summarises the run.")
    status: ConditionStatus = pydantic.Field(description="`True`, `False` or `Unknown` (still running).")
    reason: str = pydantic.Field(description="CamelCase cause of the last transition.")
    message: str = pydantic.Field("", description="Human-readable detail of the last transition.")
    last_transition_time: Timestamp = pydantic.Field(description="When the status last changed.")
    observed_generation: int | None = pydantic.Field(
        None, description="The `metadata.generation` this condition was computed from."
    )


class Usage(StatusModel):
    """Model usage accumulated over the run."""

    requests: int = pydantic.Field(0, ge=0, description="Model requests made.")
    input_tokens: int = pydantic.Field(0, ge=0, description="Prompt tokens consumed.")
    output_tokens: int = pydantic.Field(0, ge=0, description="Completion tokens produced.")


class EventType(enum.StrEnum):
    RUN_STARTED = "run_started"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FAILED = "attempt_failed"
    MODEL_REQUEST = "model_request"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"


class RunEvent(StatusModel):
    """One entry of the run's event stream."""

    id: int = pydantic.Field(ge=1, description="Strictly increasing within the run, starting at 1.")
    type: str = pydantic.Field(description="Event type, such as `run_started` or `run_failed`.")
    time: Timestamp = pydantic.Field(description="When the event happened.")
    data: dict[str, Any] | None = pydantic.Field(
        None, description="Event payload.", json_schema_extra=schema_hints.open_object()
    )


class ContentRef(StatusModel):
    """Where a payload too large for the status is stored instead."""

    kind: Literal["ConfigMap", "Secret"] = pydantic.Field(description="Kind of the owned object.")
    name: str = pydantic.Field(description="Name of the object, in the run's namespace.")
    key: str = pydantic.Field(description="Key holding the JSON payload.")
    size_bytes: int = pydantic.Field(ge=0, description="Size of the stored JSON.")


class RunnerStatus(StatusModel):
    """Which operator instance executes the run (it holds the operator's leader Lease while it does)."""

    mode: RunnerMode = pydantic.Field(description="How the run is executed.")
    instance: str = pydantic.Field(description="Identity of the operator instance that owns the run.")


class AgentRecord(StatusModel):
    """The Agent a run was admitted with."""

    name: str = pydantic.Field(description="Name of the Agent.")
    uid: str = pydantic.Field("", description="Uid of the Agent object.")
    generation: int = pydantic.Field(0, description="The Agent's `metadata.generation` that the run uses.")
    spec: AgentSpec = pydantic.Field(description="The Agent's spec at that generation.")


class Attempt(StatusModel):
    """One execution of the run: recorded before it starts, completed when it ends."""

    number: int = pydantic.Field(ge=1, description="1 for the first attempt, then 2, 3, ... for retries.")
    mode: RunnerMode = pydantic.Field(description="Where this attempt executes.")
    instance: str = pydantic.Field(description="The operator instance that started this attempt.")
    pod_name: str | None = pydantic.Field(None, description="The runner Pod of a pod-mode attempt.")
    runner_events: int | None = pydantic.Field(
        None,
        ge=0,
        description=(
            "Pod mode: how many of the runner's progress events of this attempt are recorded; "
            "an operator that adopts the attempt resumes after them."
        ),
    )
    start_time: Timestamp = pydantic.Field(description="When the attempt was recorded as started.")
    completion_time: Timestamp | None = pydantic.Field(None, description="When the attempt ended.")
    reason: str | None = pydantic.Field(None, description="How the attempt ended, as a run reason.")
    message: str | None = pydantic.Field(None, description="Detail of how the attempt ended.")
    status_code: int | None = pydantic.Field(
        None, description="HTTP status of the model error that ended the attempt, when there was one."
    )


class AgentRunStatus(StatusModel):
    """The observed state of a run. Written only by the operator."""

    phase: Phase = pydantic.Field(Phase.PENDING, description="Pending, Running, Succeeded, Failed or Cancelled.")
    conditions: list[Condition] = pydantic.Field(
        default_factory=list,
        description="Latest observations. `Succeeded` is `Unknown` while running.",
        json_schema_extra=schema_hints.map_list("type"),
    )
    reason: str | None = pydantic.Field(
        None, description="Machine-readable cause of the phase, such as `Queued` or `DeadlineExceeded`."
    )
    message: str | None = pydantic.Field(None, description="Human-readable error or detail.")
    start_time: Timestamp | None = pydantic.Field(None, description="When the run was admitted.")
    completion_time: Timestamp | None = pydantic.Field(None, description="When the run became terminal.")
    output: Any = pydantic.Field(
        None,
        description="The result: JSON when the composition has an output layer, else text.",
        json_schema_extra=schema_hints.any_value(),
    )
    output_ref: ContentRef | None = pydantic.Field(
        None, description="Set instead of `output` when the output is too large for the status."
    )
    usage: Usage | None = pydantic.Field(None, description="Model usage of the run.")
    session_snapshot: SessionSnapshot | None = pydantic.Field(
        None, description="Pass to `spec.sessionSnapshot` of a follow-up run to continue the session."
    )
    session_snapshot_ref: ContentRef | None = pydantic.Field(
        None, description="Set instead of `sessionSnapshot` when the snapshot is too large for the status."
    )
    events: list[RunEvent] = pydantic.Field(
        default_factory=list, description="The newest events, oldest first; the ring drops the oldest."
    )
    event_count: int = pydantic.Field(0, ge=0, description="Events emitted in total, including dropped ones.")
    runner: RunnerStatus | None = pydantic.Field(None, description="The executing operator instance.")
    agent: AgentRecord | None = pydantic.Field(
        None, description="The Agent the run named, as it was when the run was admitted; later edits do not apply."
    )
    thread_turn: int | None = pydantic.Field(
        None, description="The run's turn in its AgentThread, taken when it was admitted."
    )
    next_attempt_time: Timestamp | None = pydantic.Field(
        None, description="While waiting to retry (reason RetryBackoff): when the next attempt starts."
    )
    attempts: list[Attempt] = pydantic.Field(
        default_factory=list,
        description="The attempt ledger, oldest first: each attempt is recorded before it starts.",
        json_schema_extra=schema_hints.map_list("number"),
    )
    observed_generation: int | None = pydantic.Field(None, description="The `metadata.generation` the status reflects.")

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def mode(self) -> RunnerMode:
        """Where the run executes, as recorded when it was admitted."""
        return self.runner.mode if self.runner is not None else RunnerMode.TASK

    @property
    def last_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @classmethod
    def decode(cls, raw: Any) -> tuple[AgentRunStatus, list[str]]:
        """Read a stored status leniently, as Go controllers do.

        Unknown fields are ignored. A known field whose value this version cannot read
        is left at its default and named in the returned problems, so one odd field
        never turns a finished run back into a new one. Callers must not act on a
        status whose ``phase`` is among the problems.
        """
        if not isinstance(raw, dict):
            return cls(), [] if raw is None else ["status"]
        try:
            return cls.model_validate(raw), []
        except pydantic.ValidationError:
            pass
        readable: dict[str, Any] = {}
        problems: list[str] = []
        for name, field in cls.model_fields.items():
            wire = field.alias or name
            if wire not in raw:
                continue
            try:
                cls.model_validate({wire: raw[wire]})
            except pydantic.ValidationError:
                problems.append(wire)
            else:
                readable[wire] = raw[wire]
        return cls.model_validate(readable), problems


class AgentRun(ApiModel):
    """An AI agent request, executed by the agentrun operator."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentrun.dev/v1alpha1"] = pydantic.Field("agentrun.dev/v1alpha1", description="API version.")
    kind: Literal["AgentRun"] = pydantic.Field("AgentRun", description="Kind.")
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict, description="Standard object metadata.")
    spec: AgentRunSpec = pydantic.Field(description="The desired run.")
    status: AgentRunStatus = pydantic.Field(default_factory=AgentRunStatus, description="The observed run.")


# --- AgentThread ------------------------------------------------------------------


class MultitaskStrategy(enum.StrEnum):
    """What happens when a run joins a thread while another of its runs is active."""

    REJECT = "reject"
    """The new run fails InvalidRequest, naming the active run."""
    ENQUEUE = "enqueue"
    """The new run waits Pending (reason ThreadBusy) and runs after the others, first created first."""
    INTERRUPT = "interrupt"
    """The active run is cancelled (reason Interrupted), its partial turn kept in the history; the new one starts."""
    ROLLBACK = "rollback"
    """The active run is cancelled (reason Interrupted) and its turn is not kept; the new one starts."""


class AgentThreadSpec(ApiModel):
    """A named conversation that runs join with `spec.threadRef`."""

    agent_ref: AgentRef | None = pydantic.Field(
        None, description="The Agent that `kubectl agentrun chat` runs in this thread."
    )
    multitask_strategy: MultitaskStrategy = pydantic.Field(
        MultitaskStrategy.ENQUEUE,
        description="What happens when a run joins while another is active: reject, enqueue, interrupt or rollback.",
    )


class ThreadPhase(enum.StrEnum):
    """Where a conversation stands."""

    IDLE = "Idle"
    BUSY = "Busy"
    ERROR = "Error"


class AgentThreadStatus(StatusModel):
    """The conversation as its runs left it. Written only by the operator."""

    phase: ThreadPhase = pydantic.Field(
        ThreadPhase.IDLE, description="Idle, Busy (a run is active) or Error (the newest run failed)."
    )
    active_run: str | None = pydantic.Field(None, description="The run that holds the thread now.")
    active_run_uid: str | None = pydantic.Field(None, description="Uid of that run.")
    last_run: str | None = pydantic.Field(None, description="The newest run that finished.")
    turns: int = pydantic.Field(0, ge=0, description="Turns taken: each run that held the thread took the next.")
    last_turn: int | None = pydantic.Field(
        None, description="The turn of the newest finished run; a run of an earlier turn never overwrites the thread."
    )
    run_count: int = pydantic.Field(0, ge=0, description="Runs that finished in the thread.")
    history: SessionSnapshot | None = pydantic.Field(
        None, description="The conversation so far, as a session snapshot."
    )
    history_ref: ContentRef | None = pydantic.Field(
        None, description="Set instead of `history` when the conversation is too large for the status."
    )
    conditions: list[Condition] = pydantic.Field(
        default_factory=list,
        description="Latest observations: `Ready` is False while the newest run's failure stands.",
        json_schema_extra=schema_hints.map_list("type"),
    )
    observed_generation: int | None = pydantic.Field(None, description="The `metadata.generation` the status reflects.")


class AgentThread(ApiModel):
    """A named conversation: runs join it with `spec.threadRef` and it keeps the history."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentrun.dev/v1alpha1"] = pydantic.Field("agentrun.dev/v1alpha1", description="API version.")
    kind: Literal["AgentThread"] = pydantic.Field("AgentThread", description="Kind.")
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict, description="Standard object metadata.")
    spec: AgentThreadSpec = pydantic.Field(
        default_factory=AgentThreadSpec, description="The thread.", json_schema_extra={"default": {}}
    )
    status: AgentThreadStatus = pydantic.Field(
        default_factory=AgentThreadStatus, description="The conversation so far."
    )
