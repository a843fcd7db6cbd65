"""The RunStore of the runtime, implemented on kubernetes-asyncio."""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from kubernetes_asyncio import client, watch

from agentrun.api import models
from agentrun.kube import errors
from agentrun.runtime import store

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500
# Every top-level status field, so that a merge patch clears the ones the new status leaves unset.
STATUS_FIELDS = tuple(field.alias or name for name, field in models.AgentRunStatus.model_fields.items())


def status_patch(status: models.AgentRunStatus, resource_version: str) -> dict[str, Any]:
    """A merge patch that makes the stored status equal ``status``, guarded by resourceVersion."""
    wire = status.to_wire()
    return {
        "metadata": {"resourceVersion": resource_version},
        "status": {name: wire.get(name) for name in STATUS_FIELDS},
    }


def owner_reference(run: store.RunObject) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": run.ref.name,
        "uid": run.ref.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def child_labels(run: store.RunObject) -> dict[str, str]:
    return {models.MANAGED_BY_LABEL: models.MANAGED_BY_VALUE, models.RUN_LABEL: run.ref.name}


class KubeRunStore:
    """Reads and guarded writes of AgentRuns, their Secrets and Events."""

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str], instance: str) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._namespaces = list(namespaces)
        self._instance = instance

    async def get(self, ref: store.RunRef) -> store.RunObject:
        with errors.translated(f"read AgentRun {ref}"):
            body = await self._custom.get_namespaced_custom_object(
                models.GROUP, models.VERSION, ref.namespace, models.PLURAL, ref.name
            )
        return store.RunObject.from_body(body)

    async def _pages(self, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            with errors.translated("list AgentRuns"):
                if namespace is None:
                    page = await self._custom.list_cluster_custom_object(
                        models.GROUP, models.VERSION, models.PLURAL, **kwargs
                    )
                else:
                    page = await self._custom.list_namespaced_custom_object(
                        models.GROUP, models.VERSION, namespace, models.PLURAL, **kwargs
                    )
            for item in page.get("items", []):
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def list_running(self) -> list[store.RunObject]:
        running: list[store.RunObject] = []
        scopes: list[str | None] = [*self._namespaces] or [None]
        for namespace in scopes:
            async for item in self._pages(namespace):
                # Cheap pre-filter: most runs are finished and need no parsing at all.
                if (item.get("status") or {}).get("phase") == models.Phase.RUNNING.value:
                    running.append(store.RunObject.from_body(item))
        return running

    async def write_status(self, run: store.RunObject, status: models.AgentRunStatus) -> store.RunObject:
        with errors.translated(f"write status of AgentRun {run.ref}"):
            body = await self._custom.patch_namespaced_custom_object_status(
                models.GROUP,
                models.VERSION,
                run.ref.namespace,
                models.PLURAL,
                run.ref.name,
                status_patch(status, run.resource_version),
                _content_type=MERGE_PATCH,
            )
        return store.RunObject.from_body(body)

    async def set_finalizer(self, run: store.RunObject, present: bool) -> store.RunObject | None:
        others = [f for f in run.finalizers if f != models.FINALIZER]
        finalizers = [*others, models.FINALIZER] if present else others
        patch = {"metadata": {"resourceVersion": run.resource_version, "finalizers": finalizers}}
        try:
            with errors.translated(f"{'add' if present else 'remove'} finalizer of AgentRun {run.ref}"):
                body = await self._custom.patch_namespaced_custom_object(
                    models.GROUP,
                    models.VERSION,
                    run.ref.namespace,
                    models.PLURAL,
                    run.ref.name,
                    patch,
                    _content_type=MERGE_PATCH,
                )
        except store.NotFound:
            return None
        return store.RunObject.from_body(body)

    async def store_payload(self, run: store.RunObject, purpose: str, payload: str) -> models.ContentRef:
        name = f"{run.ref.name}-{purpose}"[:253]
        key = f"{purpose}.json"
        data = {key: base64.b64encode(payload.encode()).decode()}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": run.ref.namespace,
                "labels": child_labels(run),
                "ownerReferences": [owner_reference(run)],
            },
            "type": "Opaque",
            "data": data,
        }
        action = f"store {purpose} of AgentRun {run.ref} in Secret {name}"
        try:
            with errors.translated(action):
                await self._core.create_namespaced_secret(run.ref.namespace, secret)
        except store.Conflict:
            # A previous attempt of this run already created it: same name, new content.
            with errors.translated(action):
                await self._core.patch_namespaced_secret(
                    name, run.ref.namespace, {"data": data}, _content_type=MERGE_PATCH
                )
        return models.ContentRef(kind="Secret", name=name, key=key, size_bytes=len(payload.encode()))

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        with errors.translated(f"read Secret {namespace}/{name}"):
            secret = await self._core.read_namespaced_secret(name, namespace)
        value = (secret.data or {}).get(key)
        if value is None:
            raise store.NotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(value).decode()

    async def record_event(
        self,
        run: store.RunObject,
        severity: store.EventSeverity,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{run.ref.name}.", "namespace": run.ref.namespace},
            "involvedObject": {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": run.ref.name,
                "namespace": run.ref.namespace,
                "uid": run.ref.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": severity.value,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": models.MANAGED_BY_VALUE},
            "reportingComponent": models.MANAGED_BY_VALUE,
            "reportingInstance": self._instance,
        }
        try:
            with errors.translated(f"post Event {reason} for AgentRun {run.ref}"):
                await self._core.create_namespaced_event(run.ref.namespace, event)
        except store.StoreError as error:
            # Events are a courtesy to people running `kubectl describe`; the status is the record.
            logger.warning("%s", error)


async def watch_run(api: client.ApiClient, namespace: str, name: str) -> AsyncIterator[dict[str, Any]]:
    """The run as it is now, then each new version of it, until it is deleted.

    The watch is renewed every minute; if its resourceVersion expires (410), the run
    is read again and watched from there, so a long follow never stops on its own.
    """
    custom = client.CustomObjectsApi(api)
    resource_version: str | None = None
    while True:
        if resource_version is None:
            with errors.translated(f"read AgentRun {namespace}/{name}"):
                body = await custom.get_namespaced_custom_object(
                    models.GROUP, models.VERSION, namespace, models.PLURAL, name
                )
            resource_version = body["metadata"]["resourceVersion"]
            yield body
        stream = watch.Watch()
        try:
            with errors.translated(f"watch AgentRun {namespace}/{name}"):
                async with stream.stream(
                    custom.list_namespaced_custom_object,
                    models.GROUP,
                    models.VERSION,
                    namespace,
                    models.PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=resource_version,
                    timeout_seconds=60,
                ) as events:
                    async for event in events:
                        if event["type"] == "DELETED":
                            return
                        if event["type"] in ("ADDED", "MODIFIED"):
                            resource_version = event["object"]["metadata"]["resourceVersion"]
                            yield event["object"]
        except store.Gone:
            resource_version = None
