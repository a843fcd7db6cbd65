"""The pod runner: each attempt of a run executes in its own Pod, and the operator follows it.

The attempt is recorded, with its Pod's name, before the Pod exists (see
:mod:`agentrun.runtime.admission`). The instance that started the attempt writes the
input Secret and creates the Pod (an existing Pod of that name owned by the run is the
same Pod); an instance that adopted the attempt only follows the Pod, never creates one,
so an attempt never runs twice. Following reads ``pods/log`` from the start and skips the
events the status already records (the runner numbers them; the attempt ledger keeps the
count), so resuming never duplicates an event. The result is read from the log's result
record; a Pod that ends without one is mapped to a reason by :mod:`agentrun.pods.outcomes`.

Cancellation of this work without a stop request means the operator is detaching (it
shuts down): the Pod keeps running. A stop request (cancel, delete, deadline) deletes the
Pod with a grace period; the runner flushes, and the work then ends as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentrun import settings as settings_module
from agentrun.api import models
from agentrun.layers import compositor, errors, redaction
from agentrun.pods import entry, outcomes, protocol, spec
from agentrun.runtime import attempts, decisions, ports, progress, runner, writer

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
POLL_SECONDS = (0.2, 1.0)
"""First and longest wait between two reads of a Pod that is not running yet."""
SERVICE_ACCOUNT = re.compile(r"(?i)service ?account")
DEADLINE_MARGIN_SECONDS = 0.5
"""A Pod never scheduled fails this long before the run's deadline, so the message can say why."""


@dataclasses.dataclass(frozen=True)
class PodSettings:
    defaults: spec.PodDefaults
    instance: str
    default_timeout_seconds: float
    start_timeout_seconds: float


def settings_from(operator: settings_module.Settings) -> PodSettings:
    """The pod runner's settings, from the operator's (the chart sets the image to the operator's own)."""
    return PodSettings(
        defaults=spec.PodDefaults(
            image=operator.runner_image or "agentrun-operator:latest",
            pull_policy=operator.runner_image_pull_policy,
            resources=operator.runner_resources,
        ),
        instance=operator.instance,
        default_timeout_seconds=operator.default_timeout_seconds,
        start_timeout_seconds=operator.runner_start_timeout_seconds,
    )


class PodRunner:
    """Runs attempts in Pods, behind the same :class:`agentrun.runtime.runner.Runner` protocol as task mode."""

    def __init__(
        self, tasks: runner.TaskRunner, pods: ports.PodApi, settings: PodSettings, clock: progress.Clock
    ) -> None:
        self.tasks = tasks
        """Resolves what the agent runs, as task mode does, and reads the Secrets it references."""
        self.pods = pods
        self.settings = settings
        self.clock = clock

    async def execute(self, run: ports.RunObject, sink: progress.ProgressSink) -> compositor.CompositionResult:
        last = run.status.last_attempt
        if last is None or last.pod_name is None:
            raise outcomes.PodFailed("the attempt names no runner Pod")
        followed = _PodAttempt(self, run, last, sink)
        stopper = asyncio.create_task(followed.stop_when_asked(), name=f"stop pod {last.pod_name}")
        try:
            if last.instance == self.settings.instance:
                await followed.create()
            result = await followed.follow()
        except errors.RunFailure:
            if sink.stop_requested.is_set():
                raise asyncio.CancelledError from None  # stopped: the driver records why
            if followed.unfinished:  # never scheduled, or its image never pulled: nothing will end it
                with contextlib.suppress(ports.ApiError, TimeoutError):
                    await asyncio.wait_for(followed.delete(grace=0), 10)
            raise
        except asyncio.CancelledError:
            if sink.stop_requested.is_set() and not followed.stopped:  # a deadline, or a stop past its grace
                with contextlib.suppress(ports.ApiError, TimeoutError):
                    await asyncio.wait_for(followed.delete(grace=0), 10)
            raise  # otherwise the operator detaches: the Pod keeps running for the next instance
        finally:
            stopper.cancel()
        if sink.stop_requested.is_set():
            raise asyncio.CancelledError
        return result


class _PodAttempt:
    """Creating, following and stopping one attempt's Pod."""

    def __init__(
        self, owner: PodRunner, run: ports.RunObject, attempt: models.Attempt, sink: progress.ProgressSink
    ) -> None:
        self.owner = owner
        self.run = run
        self.attempt = attempt
        self.sink = sink
        assert attempt.pod_name is not None
        self.name = attempt.pod_name
        self.namespace = run.ref.namespace
        self.cursor = attempt.runner_events or 0
        self.tail = outcomes.LogTail()
        self.redactor = redaction.Redactor()
        self.image = ""
        self.stopped = False
        self.unfinished = False
        """The Pod exists and has not started its container: it would wait there for ever."""
        settings = owner.settings
        budget = attempts.remaining_seconds(run, settings.default_timeout_seconds, owner.clock())
        self.deadline = time.monotonic() + budget

    # --- creating -------------------------------------------------------------------------

    async def create(self) -> None:
        """Write the input Secret and create the Pod; an existing Pod of this run is the same Pod."""
        owner, run = self.owner, self.run
        resolved = await owner.tasks.resolved_spec(run)
        read = owner.tasks.secret_reader(self.namespace)
        for ref in spec.secret_refs(resolved):
            # Fails like task mode when a key is missing; the value masks the Pod's log in messages.
            self.redactor.add(await read(ref.name, ref.key))
        document = entry.input_document(self.namespace, spec.runner_input(resolved))
        secret = spec.input_secret_name(run.ref.name, run.ref.uid)
        await self._retried(
            lambda: owner.pods.put_run_secret(run, secret, entry.INPUT_KEY, document), what="store the runner input"
        )
        manifest = spec.build_pod(
            namespace=self.namespace,
            run_name=run.ref.name,
            run_uid=run.ref.uid,
            attempt=self.attempt.number,
            pod_name=self.name,
            spec=resolved,
            defaults=owner.settings.defaults,
            deadline_seconds=self.deadline - time.monotonic(),
        )
        self.image = manifest["spec"]["containers"][0]["image"]
        try:
            await self._retried(lambda: owner.pods.create_pod(manifest), what="create the runner Pod")
        except ports.Conflict:
            found = await self._retried(
                lambda: owner.pods.pod_owner_uid(self.namespace, self.name), what="read the runner Pod"
            )
            if found != run.ref.uid:
                raise outcomes.PodFailed(
                    f"a Pod named {self.name} exists and does not belong to this run; it is left untouched"
                ) from None
        except ports.Forbidden as error:
            if "RuntimeClass" in str(error):
                raise outcomes.IsolationUnavailable(
                    f"RuntimeClass '{resolved.runner.runtime_class_name if resolved.runner else ''}' does not exist: "
                    "the run does not start without the isolation it asks for"
                ) from None
            raise outcomes.PodFailed(f"the runner Pod was refused: {error}") from None
        except ports.Rejected as error:
            raise errors.InvalidRequest(f"the runner Pod is invalid: {error}") from None

    async def _retried(self, call: Callable[[], Awaitable[Result]], *, what: str) -> Result:
        backoff = writer.Backoff()
        while True:
            try:
                return await call()
            except (ports.Unavailable, ports.Forbidden) as error:
                # A new namespace's default ServiceAccount appears seconds after the namespace; until
                # then admission refuses the Pod. Other refusals are final.
                if isinstance(error, ports.Forbidden) and not SERVICE_ACCOUNT.search(str(error)):
                    raise
                logger.warning("AgentRun %s: could not %s, will retry: %s", self.run.ref, what, error)
                if not await backoff.sleep(self.deadline):
                    raise outcomes.PodFailed(f"could not {what} before the run's deadline: {error}") from None

    # --- following ------------------------------------------------------------------------

    async def follow(self) -> compositor.CompositionResult:
        """Follow the Pod until its result is read or it ends without one."""
        pause = POLL_SECONDS[0]
        image_failing_since: float | None = None
        unschedulable: str | None = None
        while True:
            try:
                state = await self.owner.pods.read_pod(self.namespace, self.name)
            except ports.NotFound:
                raise outcomes.PodFailed(
                    outcomes.with_tail(
                        f"the runner Pod {self.name} is gone (deleted, or lost with its node) before it wrote a result",
                        self.tail.text(self.redactor),
                    )
                ) from None
            except ports.ApiError as error:
                logger.warning("AgentRun %s: could not read Pod %s, will retry: %s", self.run.ref, self.name, error)
                await asyncio.sleep(POLL_SECONDS[1])
                continue
            if state.container.running or state.ended:
                self.unfinished = False
                result = await self._read_log()
                if result is not None:
                    return await self._finish(result)
                if state.ended:
                    # The log may have been read before the container's last lines: read it once more.
                    result = await self._read_log()
                    if result is not None:
                        return await self._finish(result)
                    raise self._failure(state)
                await asyncio.sleep(POLL_SECONDS[1])  # the stream dropped while the container runs: reconnect
                continue
            if state.phase == "Failed":
                raise self._failure(state)
            self.unfinished = True
            waiting = state.container.waiting_reason
            if waiting in IMAGE_ERRORS or waiting in CONFIG_ERRORS:
                image_failing_since = image_failing_since or time.monotonic()
                if time.monotonic() - image_failing_since >= self.owner.settings.start_timeout_seconds:
                    detail = outcomes.describe([waiting, state.container.waiting_message])
                    if waiting in IMAGE_ERRORS:
                        raise outcomes.ImageUnavailable(
                            f"the runner image '{self.image or 'of the Pod'}' cannot be pulled: {detail}"
                        )
                    raise outcomes.PodFailed(f"the runner container of Pod {self.name} cannot start: {detail}")
            else:
                image_failing_since = None
            unschedulable = state.unschedulable or unschedulable
            if time.monotonic() >= self.deadline - DEADLINE_MARGIN_SECONDS:
                limit = decisions.deadline_seconds(self.run, self.owner.settings.default_timeout_seconds)
                why = f"; the runner Pod was never scheduled: {unschedulable}" if unschedulable else ""
                raise outcomes.DeadlineExceeded(f"run exceeded its deadline of {limit:g} seconds{why}")
            await asyncio.sleep(pause)
            pause = min(POLL_SECONDS[1], pause * 2)

    async def _read_log(self) -> protocol.Result | None:
        """Read the container's log from its start, passing on the events not yet recorded; the result, if any."""
        self.tail.clear()
        try:
            async for line in self.owner.pods.pod_log(self.namespace, self.name):
                record = protocol.parse(line)
                if record is None:
                    self.tail.add(line)
                elif isinstance(record, protocol.Event):
                    if record.seq > self.cursor:
                        self.cursor = record.seq
                        self.sink.emit_at(record.type, record.data, at=record.time, seq=record.seq)
                else:
                    return record
        except ports.NotFound:
            return None
        except ports.ApiError as error:
            logger.warning(
                "AgentRun %s: the log of Pod %s broke off, will reconnect: %s", self.run.ref, self.name, error
            )
        return None

    async def _finish(self, result: protocol.Result) -> compositor.CompositionResult:
        if result.outcome == protocol.SUCCEEDED and result.session_snapshot is not None:
            return compositor.CompositionResult(
                output=result.output, usage=result.usage or models.Usage(), session_snapshot=result.session_snapshot
            )
        if result.outcome == protocol.FAILED:
            raise outcomes.RunnerFailure(
                outcomes.runner_reason(result.reason),
                result.message,
                status_code=result.status_code,
                usage=result.usage,
            )
        if self.sink.stop_requested.is_set():
            self.stopped = True  # the runner flushed and ended as asked
            raise asyncio.CancelledError
        # Stopped by someone else: an eviction, a preemption, a deletion of the Pod.
        try:
            state = await self.owner.pods.read_pod(self.namespace, self.name)
        except ports.ApiError:
            state = ports.PodState(phase="Unknown", reason="Deleted")
        raise outcomes.PodFailed(
            f"the runner Pod {self.name} was stopped before it finished"
            + (f" ({state.disruption})" if state.disruption else "")
        )

    def _failure(self, state: ports.PodState) -> errors.RunFailure:
        container = state.container
        if state.reason == "DeadlineExceeded":
            limit = decisions.deadline_seconds(self.run, self.owner.settings.default_timeout_seconds)
            return outcomes.DeadlineExceeded(f"run exceeded its deadline of {limit:g} seconds (the runner Pod's own)")
        words = outcomes.cause(state.reason, state.disruption, container.terminated_reason, container.exit_code)
        detail = f" ({state.message})" if state.message else ""
        message = f"the runner Pod {self.name} {words}{detail}"
        return outcomes.PodFailed(outcomes.with_tail(message, self.tail.text(self.redactor)))

    # --- stopping -------------------------------------------------------------------------

    async def stop_when_asked(self) -> None:
        """Delete the Pod with a grace period once the attempt is stopped: the runner flushes and ends."""
        await self.sink.stop_requested.wait()
        with contextlib.suppress(ports.ApiError):
            await self.delete(grace=spec.TERMINATION_GRACE_SECONDS)

    async def delete(self, *, grace: int) -> None:
        await self.owner.pods.delete_pod(self.namespace, self.name, grace_seconds=grace)
