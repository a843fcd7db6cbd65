"""Runners execute one admitted run and return what it produced.

The scheduler does not care where the agent executes: ``TaskRunner`` runs it in
this process as an asyncio task; a pod runner can plug in behind the same
:class:`Runner` protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Callable
from typing import Any, Protocol

from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry
from agentrun.runtime import store, transitions

Clock = Callable[[], datetime.datetime]


class ProgressSink:
    """Collects a run's progress events until the next status write takes them."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.pending: list[transitions.PendingEvent] = []
        self.arrived = asyncio.Event()
        self._last: datetime.datetime | None = None

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        # Strictly increasing times make (type, time) identify an event, so a retried write
        # never records the same event twice (see transitions.with_events).
        now = self._clock()
        if self._last is not None and now <= self._last:
            now = self._last + datetime.timedelta(microseconds=1)
        self._last = now
        self.pending.append(transitions.PendingEvent(event_type, now, data or None))
        self.arrived.set()

    def taken(self, count: int) -> None:
        """The first ``count`` pending events were written."""
        del self.pending[:count]
        if not self.pending:
            self.arrived.clear()


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    output: Any
    usage: models.Usage
    session_snapshot: models.SessionSnapshot


class Runner(Protocol):
    async def execute(self, run: store.RunObject, progress: ProgressSink) -> RunOutcome:
        """Run the agent to its end; raise ``RunFailure`` for a classified failure."""


class TaskRunner:
    """Runs the composition inside the operator process."""

    def __init__(self, layer_registry: registry.LayerRegistry, run_store: store.RunStore) -> None:
        self._registry = layer_registry
        self._store = run_store

    async def execute(self, run: store.RunObject, progress: ProgressSink) -> RunOutcome:
        if run.spec is None:
            raise errors.InvalidRequest(run.spec_error or "spec is missing")
        if run.spec.runner.mode is not models.RunnerMode.TASK:
            raise errors.InvalidRequest(
                f"runner mode '{run.spec.runner.mode.value}' is not available in this operator; use mode 'task'"
            )
        context = base.RunContext(namespace=run.ref.namespace, read_secret=self._secret_reader(run.ref.namespace))
        result = await compositor.run(run.spec, self._registry, context, progress.emit)
        return RunOutcome(output=result.output, usage=result.usage, session_snapshot=result.session_snapshot)

    def _secret_reader(self, namespace: str) -> base.SecretReader:
        async def read(name: str, key: str) -> str:
            try:
                return await self._store.read_secret(namespace, name, key)
            except store.NotFound:
                raise errors.CredentialsUnavailable(
                    f"Secret '{name}' with key '{key}' was not found in namespace '{namespace}'"
                ) from None
            except store.Forbidden:
                raise errors.CredentialsUnavailable(
                    f"the operator is not allowed to read Secret '{name}' in namespace '{namespace}'"
                ) from None
            except store.StoreError:
                raise errors.CredentialsUnavailable(
                    f"Secret '{name}' in namespace '{namespace}' could not be read: the API server is unavailable"
                ) from None

        return read
