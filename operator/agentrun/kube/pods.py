"""Runner Pods on kubernetes-asyncio: create, read, delete, and follow their log.

The pod runner (:mod:`agentrun.pods.adapter`) builds the manifests; this module only
talks to the API server, mapping its answers onto the API port's errors and state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from kubernetes_asyncio import client

from agentrun.kube import errors, streams
from agentrun.kube import store as kube_store
from agentrun.runtime import ports

CONTAINER = "runner"
LOG_READ_TIMEOUT_SECONDS = 60.0
"""A log stream silent this long is reopened (the adapter re-reads the Pod first)."""


def pod_state(pod: Any) -> ports.PodState:
    """What the adapter needs from a V1Pod."""
    status = pod.status
    conditions = {condition.type: condition for condition in (status.conditions or [])}
    scheduled = conditions.get("PodScheduled")
    unschedulable = (
        scheduled.message or scheduled.reason
        if scheduled is not None and scheduled.status == "False" and scheduled.reason == "Unschedulable"
        else None
    )
    target = conditions.get("DisruptionTarget")
    disruption = (
        ": ".join(part for part in (target.reason, target.message) if part)
        if target is not None and target.status == "True"
        else None
    )
    container = ports.ContainerState()
    for found in status.container_statuses or []:
        if found.name != CONTAINER:
            continue
        state = found.state
        if state is None:
            break
        if state.terminated is not None:
            container = ports.ContainerState(
                exit_code=state.terminated.exit_code,
                terminated_reason=state.terminated.reason,
                termination_message=state.terminated.message,
            )
        elif state.running is not None:
            container = ports.ContainerState(running=True)
        elif state.waiting is not None:
            container = ports.ContainerState(waiting_reason=state.waiting.reason, waiting_message=state.waiting.message)
    return ports.PodState(
        phase=status.phase or "Pending",
        reason=status.reason,
        message=status.message,
        deleting=pod.metadata.deletion_timestamp is not None,
        unschedulable=unschedulable,
        disruption=disruption,
        container=container,
    )


class KubePodApi:
    """The pod runner's port (:class:`agentrun.runtime.ports.PodApi`) against a real API server."""

    def __init__(self, api: client.ApiClient, store: kube_store.KubeRunStore, *, request_timeout: float) -> None:
        self._core = client.CoreV1Api(api)
        self._store = store
        self._timeout = request_timeout

    async def put_run_secret(self, run: ports.RunObject, name: str, key: str, payload: str) -> None:
        await self._store.put_run_secret(run, name, key, payload)

    async def create_pod(self, manifest: Mapping[str, Any]) -> None:
        metadata = manifest["metadata"]
        with errors.translated(f"create Pod {metadata['namespace']}/{metadata['name']}"):
            await self._core.create_namespaced_pod(
                metadata["namespace"], dict(manifest), _request_timeout=self._timeout
            )

    async def read_pod(self, namespace: str, name: str) -> ports.PodState:
        with errors.translated(f"read Pod {namespace}/{name}"):
            pod = await self._core.read_namespaced_pod(name, namespace, _request_timeout=self._timeout)
        return pod_state(pod)

    async def pod_owner_uid(self, namespace: str, name: str) -> str | None:
        with errors.translated(f"read Pod {namespace}/{name}"):
            pod = await self._core.read_namespaced_pod(name, namespace, _request_timeout=self._timeout)
        controllers = [ref for ref in pod.metadata.owner_references or [] if ref.controller]
        return str(controllers[0].uid) if controllers else None

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int) -> None:
        body = {"gracePeriodSeconds": grace_seconds, "propagationPolicy": "Background"}
        try:
            with errors.translated(f"delete Pod {namespace}/{name}"):
                await self._core.delete_namespaced_pod(name, namespace, body=body, _request_timeout=self._timeout)
        except ports.NotFound:
            return

    async def pod_log(self, namespace: str, name: str) -> AsyncIterator[str]:
        action = f"follow the log of Pod {namespace}/{name}"
        with errors.translated(action):
            # Without preloading an error reply comes back as a response: checked, it raises.
            response = await errors.checked(
                await self._core.read_namespaced_pod_log(
                    name,
                    namespace,
                    container=CONTAINER,
                    follow=True,
                    _preload_content=False,
                    _request_timeout=(self._timeout, LOG_READ_TIMEOUT_SECONDS),
                )
            )
        try:
            with errors.translated(action):
                async for line in streams.lines(response.content):
                    yield line.decode(errors="replace")
        finally:
            response.release()
