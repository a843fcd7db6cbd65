"""kopf wiring: thin, typed handlers that hand objects to the scheduler.

Only ``on.event`` handlers watch AgentRuns: they keep no progress annotations and
no last-handled configuration, so kopf itself makes no writes per run. The
operator manages its own finalizer (see :mod:`agentrun.runtime.lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import kopf

from agentrun import health
from agentrun import settings as settings_module
from agentrun.api import models
from agentrun.kube import connection
from agentrun.kube import store as kube_store
from agentrun.layers import registry as layer_registry
from agentrun.runtime import metrics, runner, scheduler, store

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OperatorContext:
    """Everything the handlers share, carried in kopf's ``memo``."""

    settings: settings_module.Settings
    scheduler: scheduler.Scheduler | None = None
    connection: connection.Connection | None = None
    health: health.HealthServer | None = None
    background: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)

    def readiness(self) -> dict[str, Any]:
        sched = self.scheduler
        if sched is None:
            return {"ready": False}
        return {"ready": sched.ready, "active": sched.active_count, "queued": sched.queued_count}


def build_registry() -> kopf.OperatorRegistry:
    """A kopf registry with the AgentRun handlers (no module-level registration)."""
    registry = kopf.OperatorRegistry()
    resource = (models.GROUP, models.VERSION, models.PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same sources as kube.connection: the Pod's ServiceAccount, else the kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        _configure_kopf(settings)
        context.connection = await connection.connect()
        run_store = kube_store.KubeRunStore(
            context.connection.api, namespaces=context.settings.namespaces, instance=context.settings.instance
        )
        task_runner = runner.TaskRunner(layer_registry.LayerRegistry.from_entry_points(), run_store)
        run_metrics = metrics.Metrics()
        if context.settings.metrics_port:
            metrics.serve(run_metrics, context.settings.metrics_port)
        context.scheduler = scheduler.Scheduler(
            run_store=run_store, run_runner=task_runner, settings=context.settings, run_metrics=run_metrics
        )
        if context.settings.liveness_port:
            context.health = health.HealthServer(context.settings.liveness_port, context.readiness)
            await context.health.start()
        # Recovery reads every Running run; it runs beside the watch so /healthz answers meanwhile.
        _spawn(context, _recover_then_sweep(context.scheduler, context.settings))

    @kopf.on.event(*resource, registry=registry)
    async def agentrun_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        if context.scheduler is None:
            return
        body = event["object"]
        run = store.RunObject.from_body(body)
        if event["type"] == "DELETED":
            context.scheduler.forget(run.ref)
            return
        context.scheduler.observe(run)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        for task in context.background:
            task.cancel()
        if context.scheduler is not None:
            await context.scheduler.drain(context.settings.shutdown_grace_seconds)
            await context.scheduler.close()
        if context.connection is not None:
            await context.connection.close()
        if context.health is not None:
            await context.health.stop()

    return registry


def _configure_kopf(settings: kopf.OperatorSettings) -> None:
    # The operator manages agentrun.dev/finalizer itself. kopf must not share that name:
    # it removes "its" finalizer from objects that no deletion handler needs.
    settings.posting.enabled = False
    # Only AgentRuns are watched, by their exact group and version: no CRD discovery (and no RBAC for it).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def _spawn(context: OperatorContext, coroutine: Any) -> None:
    task = asyncio.create_task(coroutine)
    context.background.add(task)
    task.add_done_callback(context.background.discard)


async def _recover_then_sweep(sched: scheduler.Scheduler, settings: settings_module.Settings) -> None:
    while True:
        try:
            orphans = await sched.recover()
            break
        except store.StoreError as error:
            logger.warning("startup recovery could not list AgentRuns, will retry: %s", error)
            await asyncio.sleep(2)
    if orphans:
        logger.warning("failed %d runs orphaned by a previous operator instance", orphans)
    while True:
        await asyncio.sleep(settings.heartbeat_interval_seconds)
        with contextlib.suppress(store.StoreError):
            await sched.sweep_orphans()
