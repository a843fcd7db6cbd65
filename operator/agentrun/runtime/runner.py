"""Runners execute one attempt of a run and return what the composition produced.

The reconciler does not care where the agent executes: ``TaskRunner`` runs it in
this process as an asyncio task; a pod runner plugs in behind the same
:class:`Runner` protocol.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Protocol

import pydantic

from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry
from agentrun.runtime import ports, progress


class Runner(Protocol):
    async def execute(self, run: ports.RunObject, sink: progress.ProgressSink) -> compositor.CompositionResult:
        """Run the agent to its end; raise ``RunFailure`` for a classified failure."""


def effective_limits(asked: models.Limits | None, ceiling: models.Limits | None) -> models.Limits | None:
    """The run's budgets under the operator's ceiling: the lower of each, the ceiling where the run sets none."""
    if ceiling is None:
        return asked
    if asked is None:
        return ceiling
    merged: dict[str, int | None] = {}
    for name in models.Limits.model_fields:
        mine, cap = getattr(asked, name), getattr(ceiling, name)
        merged[name] = cap if mine is None else mine if cap is None else min(mine, cap)
    return models.Limits(**merged)


class ModeRunner:
    """Sends each attempt to the runner of the mode its run was admitted with (``status.runner.mode``)."""

    def __init__(self, runners: Mapping[models.RunnerMode, Runner]) -> None:
        self._runners = dict(runners)

    async def execute(self, run: ports.RunObject, sink: progress.ProgressSink) -> compositor.CompositionResult:
        mode = run.status.mode
        found = self._runners.get(mode)
        if found is None:
            raise errors.InvalidRequest(f"runner mode '{mode.value}' is not available in this operator")
        return await found.execute(run, sink)


class TaskRunner:
    """Runs the composition inside the operator process."""

    def __init__(
        self, layer_registry: registry.LayerRegistry, api: ports.RunApi, *, ceiling: models.Limits | None = None
    ) -> None:
        self._registry = layer_registry
        self._api = api
        self._ceiling = ceiling

    async def execute(self, run: ports.RunObject, sink: progress.ProgressSink) -> compositor.CompositionResult:
        spec = await self.resolved_spec(run)
        context = base.RunContext(namespace=run.ref.namespace, read_secret=self.secret_reader(run.ref.namespace))
        return await compositor.run(spec, self._registry, context, sink.emit)

    async def resolved_spec(self, run: ports.RunObject) -> models.AgentRunSpec:
        """What the agent runs: the Agent applied, the session to continue read in, limits under the ceiling.

        Raises ``RunFailure`` when the request cannot run (a missing Agent, thread or snapshot).
        """
        spec = run.effective_spec
        if spec is None:
            raise errors.InvalidRequest(run.spec_error or "spec is missing")
        if spec.agent_ref is not None and run.status.agent is None:
            raise errors.InvalidRequest(
                f"Agent '{spec.agent_ref.name}' was not found in namespace '{run.ref.namespace}'"
                " (or its spec cannot be read by this operator version)"
            )
        if spec.composition is None:
            raise errors.InvalidRequest("the run has no composition: set spec.composition or spec.agentRef")
        read_secret = self.secret_reader(run.ref.namespace)
        if spec.thread_ref is not None:
            spec = spec.model_copy(update={"session_snapshot": await self._thread_history(run, read_secret)})
        if spec.session_snapshot_ref is not None:
            snapshot = await load_snapshot(read_secret, spec.session_snapshot_ref)
            spec = spec.model_copy(update={"session_snapshot": snapshot, "session_snapshot_ref": None})
        limits = effective_limits(spec.limits, self._ceiling)
        if limits != spec.limits:
            spec = spec.model_copy(update={"limits": limits})
        return spec

    async def _thread_history(
        self, run: ports.RunObject, read_secret: base.SecretReader
    ) -> models.SessionSnapshot | None:
        """The conversation the run's thread holds (in its status, or in the Secret it owns)."""
        assert run.thread_name is not None
        try:
            thread = await self._api.get_thread(run.ref.namespace, run.thread_name)
        except ports.NotFound:
            raise errors.InvalidRequest(
                f"AgentThread '{run.thread_name}' was not found in namespace '{run.ref.namespace}'"
            ) from None
        except ports.ApiError as error:
            raise errors.CredentialsUnavailable(f"AgentThread '{run.thread_name}' could not be read: {error}") from None
        if thread.status.history_ref is not None:
            ref = thread.status.history_ref
            return await load_snapshot(read_secret, models.SessionSnapshotRef(name=ref.name, key=ref.key))
        return thread.status.history

    def secret_reader(self, namespace: str) -> base.SecretReader:
        """Reads Secrets of ``namespace`` through the API, failures classified for the run's status."""
        return functools.partial(read_run_secret, self._api, namespace)


async def read_run_secret(api: ports.RunApi, namespace: str, name: str, key: str) -> str:
    """One key of a Secret the run references, with failures classified for the run's status."""
    try:
        return await api.read_secret(namespace, name, key)
    except ports.NotFound:
        raise errors.CredentialsUnavailable(
            f"Secret '{name}' with key '{key}' was not found in namespace '{namespace}'"
        ) from None
    except ports.Forbidden:
        raise errors.CredentialsUnavailable(
            f"the operator is not allowed to read Secret '{name}' in namespace '{namespace}'"
        ) from None
    except ports.ApiError:
        raise errors.CredentialsUnavailable(
            f"Secret '{name}' in namespace '{namespace}' could not be read: the API server is unavailable"
        ) from None


async def load_snapshot(read_secret: base.SecretReader, ref: models.SessionSnapshotRef) -> models.SessionSnapshot:
    """The session snapshot an earlier run offloaded to a Secret."""
    text = await read_secret(ref.name, ref.key)
    try:
        return models.SessionSnapshot.model_validate(json.loads(text))
    except (ValueError, pydantic.ValidationError):
        raise errors.InvalidRequest(
            f"sessionSnapshotRef: key '{ref.key}' of Secret '{ref.name}' does not hold a session snapshot"
        ) from None
