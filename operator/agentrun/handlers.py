"""kopf wiring: thin, typed handlers that hand runs to the reconciler.

Only ``on.event`` handlers watch AgentRuns: they keep no progress annotations and
no last-handled configuration, so kopf itself makes no writes per run. The
operator manages its own finalizer (see :mod:`agentrun.runtime.reconciler`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any

import kopf

from agentrun import health, settings
from agentrun.api import models
from agentrun.kube import connection
from agentrun.kube import pods as kube_pods
from agentrun.kube import store as kube_store
from agentrun.layers import registry
from agentrun.pods import adapter
from agentrun.runtime import metrics, ports, reconciler, runner, services, supervision, writer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OperatorContext:
    """Everything the handlers share, carried in kopf's ``memo``."""

    settings: settings.Settings
    reconciler: reconciler.Reconciler | None = None
    connection: connection.Connection | None = None
    health: health.HealthServer | None = None
    supervisor: supervision.Supervisor = dataclasses.field(default_factory=supervision.Supervisor)

    def readiness(self) -> dict[str, Any]:
        core = self.reconciler
        if core is None:
            return {"ready": False}
        return {"ready": core.ready, "active": core.active_count, "queued": core.queued_count}


def build_registry() -> kopf.OperatorRegistry:
    """A kopf registry with the AgentRun handlers (no module-level registration)."""
    kopf_registry = kopf.OperatorRegistry()
    resource = (models.GROUP, models.VERSION, models.PLURAL)

    @kopf.on.login(registry=kopf_registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # The same source and credentials as the operator's own client (kube.connection).
        found = await connection.credentials()
        return kopf.ConnectionInfo(
            server=found.server,
            ca_path=found.ca_path,
            token=found.token,
            certificate_path=found.certificate_path,
            private_key_path=found.private_key_path,
            insecure=found.insecure,
        )

    @kopf.on.startup(registry=kopf_registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        _configure_kopf(settings, context.settings)
        context.connection = await connection.connect(context.settings.api_request_timeout_seconds)
        api = kube_store.KubeRunStore(
            context.connection.api,
            namespaces=context.settings.namespaces,
            instance=context.settings.instance,
            request_timeout=context.settings.api_request_timeout_seconds,
        )
        run_metrics = metrics.Metrics()
        if context.settings.metrics_port:
            metrics.serve(run_metrics, context.settings.metrics_port)
        tasks = runner.TaskRunner(registry.LayerRegistry.from_entry_points(), api, ceiling=context.settings.max_limits)
        pod_api = kube_pods.KubePodApi(
            context.connection.api, api, request_timeout=context.settings.api_request_timeout_seconds
        )
        svc = services.Services(
            api=api,
            writer=writer.Writer(api, run_metrics),
            runner=runner.ModeRunner(
                {
                    models.RunnerMode.TASK: tasks,
                    models.RunnerMode.POD: adapter.PodRunner(
                        tasks, pod_api, adapter.settings_from(context.settings), services.utcnow
                    ),
                }
            ),
            settings=context.settings,
            metrics=run_metrics,
            supervisor=context.supervisor,
        )
        core = context.reconciler = reconciler.Reconciler(svc)
        core.start()
        if context.settings.liveness_port:
            context.health = health.HealthServer(context.settings.liveness_port, context.readiness)
            await context.health.start()
        # Recovery reads every Running run; it runs beside the watch so /healthz answers meanwhile.
        context.supervisor.keep_running(
            functools.partial(_recover_then_resync, core, context.settings), what="recovery and resync", critical=True
        )

    @kopf.on.event(*resource, registry=kopf_registry)
    async def agentrun_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        if context.reconciler is None:
            return
        run = ports.RunObject.from_body(event["object"])
        if event["type"] == "DELETED":
            context.reconciler.forget(run.ref)
            return
        context.reconciler.observe(run)

    @kopf.on.event(models.GROUP, models.VERSION, models.THREAD_PLURAL, registry=kopf_registry)
    async def agentthread_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        metadata = event["object"].get("metadata") or {}
        gone = event["type"] == "DELETED" or metadata.get("deletionTimestamp") is not None
        if context.reconciler is not None and gone:
            context.reconciler.thread_gone(metadata.get("namespace", ""), metadata.get("name", ""))

    @kopf.on.cleanup(registry=kopf_registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        context: OperatorContext = memo["context"]
        if context.reconciler is not None:
            await context.reconciler.drain(context.settings.shutdown_grace_seconds)
        await context.supervisor.close()
        if context.connection is not None:
            await context.connection.close()
        if context.health is not None:
            await context.health.stop()

    return kopf_registry


def _configure_kopf(kopf_settings: kopf.OperatorSettings, operator_settings: settings.Settings) -> None:
    # The operator manages agentrun.dev/finalizer itself. kopf must not share that name:
    # it removes "its" finalizer from objects that no deletion handler needs.
    kopf_settings.posting.enabled = False
    # Only AgentRuns are watched, by their exact group and version: no CRD discovery (and no RBAC for it).
    kopf_settings.scanning.disabled = True
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.networking.request_timeout = operator_settings.api_request_timeout_seconds


async def _recover_then_resync(core: reconciler.Reconciler, operator_settings: settings.Settings) -> None:
    """Startup recovery (retried while the API server is unavailable), then the periodic resync."""
    backoff = writer.Backoff(initial=1.0, cap=10.0)
    while True:
        try:
            orphans = await core.recover()
            break
        except ports.ApiError as error:
            logger.warning("startup recovery could not list AgentRuns, will retry: %s", error)
            await backoff.sleep(None)
    if orphans:
        logger.warning("failed %d runs orphaned by a previous operator instance", orphans)
    while True:
        await asyncio.sleep(operator_settings.heartbeat_interval_seconds)
        try:
            await core.resync()
        except ports.ApiError as error:
            logger.warning("resync could not read the runs this instance owns, will retry: %s", error)
