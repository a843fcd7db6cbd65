"""kopf wiring: the operator's lifecycle, leader election, and the watches that feed the reconciler.

Replicas elect a leader on a Lease (:mod:`agentrun.kube.lease`); only the leader
watches AgentRuns and drives them. Standbys answer their probes and wait. A leader
that loses its Lease exits at once without another write: the new leader fails its
in-process runs as orphans (retried where their policy allows).

AgentRuns are watched by the operator itself (:mod:`agentrun.kube.watch`), with a
server-side selector that leaves finished runs out, so memory follows active runs.
kopf watches only AgentThreads and keeps no per-run state; it makes no writes.
The operator manages its own finalizer (see :mod:`agentrun.runtime.reconciler`).
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
from agentrun.kube import connection, lease, watch
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
    """Set once this instance leads: only the leader drives runs."""
    elector: lease.LeaderElector | None = None
    connection: connection.Connection | None = None
    health: health.HealthServer | None = None
    supervisor: supervision.Supervisor = dataclasses.field(default_factory=supervision.Supervisor)

    def readiness(self) -> dict[str, Any]:
        """Ready: a leader once it has recovered, a standby once it knows who leads."""
        elector, core = self.elector, self.reconciler
        if elector is None or not elector.attempted.is_set():
            return {"ready": False, "leading": False}
        if core is None:
            return {"ready": not elector.leading, "leading": elector.leading}
        return {"ready": core.ready, "leading": True, "active": core.active_count, "queued": core.queued_count}


def build_registry() -> kopf.OperatorRegistry:
    """A kopf registry with the operator's lifecycle and AgentThread handlers (no module-level registration)."""
    kopf_registry = kopf.OperatorRegistry()

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
        context.elector = lease.LeaderElector(
            context.connection.election_api,
            namespace=context.settings.lease_namespace,
            name=context.settings.lease_name,
            identity=context.settings.instance,
            timing=lease.Timing(
                duration=context.settings.lease_duration_seconds,
                renew_deadline=context.settings.lease_renew_deadline_seconds,
                retry_period=context.settings.lease_retry_period_seconds,
            ),
            request_timeout=context.settings.api_request_timeout_seconds,
        )
        if context.settings.liveness_port:
            context.health = health.HealthServer(context.settings.liveness_port, context.readiness)
            await context.health.start()
        context.supervisor.keep_running(functools.partial(_lead, context, svc), what="leader election", critical=True)

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
            await context.reconciler.close()  # nothing is decided after the drain: the next leader does it
        if context.elector is not None:
            await context.elector.release()  # after the drain: a standby takes over at once
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


async def _lead(context: OperatorContext, svc: services.Services) -> None:
    """Wait for the Lease; then watch, recover and drive runs for as long as it is held."""
    elector = context.elector
    assert elector is not None
    assert context.connection is not None
    await elector.acquire()
    core = context.reconciler = reconciler.Reconciler(svc)
    core.start()
    run_watch = watch.RunWatch(
        context.connection.api,
        namespaces=context.settings.namespaces,
        request_timeout=context.settings.api_request_timeout_seconds,
        handlers=watch.Handlers(
            changed=lambda body: core.observe(ports.RunObject.from_body(body)),
            gone=lambda body: core.forget(ports.RunRef.from_body(body)),
            listed=core.listed,
        ),
    )
    context.supervisor.keep_running(run_watch.run, what="watch of AgentRuns", critical=True)
    # Recovery reads every Running run; it runs beside the watch so /healthz answers meanwhile.
    context.supervisor.keep_running(
        functools.partial(_recover_then_resync, core, context.settings), what="recovery and resync", critical=True
    )
    try:
        await elector.hold()
    except lease.LeadershipLost as lost:
        # Another instance may lead already: not one more write. Its recovery fails (or
        # adopts) the runs this process leaves behind.
        supervision.exit_now(f"leadership lost, exiting without further writes: {lost}")


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
        await asyncio.sleep(operator_settings.resync_interval_seconds)
        try:
            await core.resync()
        except ports.ApiError as error:
            logger.warning("resync could not read the runs this instance owns, will retry: %s", error)
