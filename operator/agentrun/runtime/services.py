"""What the runtime's parts share: the API port, the writer, the runner, settings and clock."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from agentrun import settings as settings_module
from agentrun.runtime import metrics, ports, runner, supervision, writer

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class Services:
    """Everything the admission, attempt, ending, recovery and shutdown code needs."""

    api: ports.RunApi
    writer: writer.Writer
    runner: runner.Runner
    settings: settings_module.Settings
    metrics: metrics.Metrics
    supervisor: supervision.Supervisor
    clock: Clock = utcnow

    @property
    def instance(self) -> str:
        return self.settings.instance

    @property
    def ring_size(self) -> int:
        return self.settings.event_ring_size

    def post_kube_event(self, run: ports.RunObject, event_type: ports.KubeEventType, reason: str, message: str) -> None:
        """Post a Kubernetes Event about the run without waiting for it."""
        self.supervisor.spawn(
            self.api.post_kube_event(run, event_type, reason, message, self.clock()),
            what=f"post Event {reason} for AgentRun {run.ref}",
        )
