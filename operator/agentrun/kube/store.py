"""The runtime's API port, implemented on kubernetes-asyncio.

Every request carries the operator's request timeout. Status writes are merge
patches of the fields the operator owns, guarded by resourceVersion, so fields
written by another operator version are kept. Offloaded payloads live in Secrets
whose names carry the run's uid and which the run owns; a Secret the run does not
own is never written.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pydantic
from kubernetes_asyncio import client, watch

from agentrun.api import models
from agentrun.kube import errors
from agentrun.runtime import ports

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500
# Every top-level status field, so that a merge patch clears the ones the new status leaves unset.
STATUS_FIELDS = tuple(field.alias or name for name, field in models.AgentRunStatus.model_fields.items())
THREAD_STATUS_FIELDS = tuple(field.alias or name for name, field in models.AgentThreadStatus.model_fields.items())


def status_patch(status: models.AgentRunStatus, resource_version: str) -> dict[str, Any]:
    """A merge patch that makes the stored status equal ``status``, guarded by resourceVersion."""
    wire = status.to_wire()
    return {
        "metadata": {"resourceVersion": resource_version},
        "status": {name: wire.get(name) for name in STATUS_FIELDS},
    }


@dataclasses.dataclass(frozen=True)
class Owner:
    """The object that owns a child: the child is garbage-collected with it."""

    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": models.API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }

    def owns(self, metadata: Any) -> bool:
        references = getattr(metadata, "owner_references", None) or []
        return any(getattr(reference, "uid", None) == self.uid for reference in references)


def child_labels(run: ports.RunObject) -> dict[str, str]:
    return {
        models.MANAGED_BY_LABEL: models.MANAGED_BY_VALUE,
        models.RUN_LABEL: run.ref.name,
        models.RUN_UID_LABEL: run.ref.uid,
    }


def payload_secret_name(run: ports.RunObject, purpose: str) -> str:
    """The Secret that holds one offloaded payload of one run: unique per run uid and purpose."""
    suffix = f"-{purpose}-{run.ref.uid[:8]}"
    return run.ref.name[: 253 - len(suffix)] + suffix


def agent_object(body: dict[str, Any]) -> ports.AgentObject:
    """An Agent as the API server returns it; a spec this version cannot read is kept as an error."""
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name", ""))
    try:
        spec: models.AgentSpec | None = models.AgentSpec.model_validate(body.get("spec") or {})
        problem = None
    except pydantic.ValidationError as error:
        spec = None
        problem = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False)
        )
    return ports.AgentObject(
        name=name,
        uid=str(metadata.get("uid", "")),
        generation=int(metadata.get("generation") or 0),
        spec=spec,
        spec_error=problem,
    )


class KubeRunStore:
    """Reads and guarded writes of AgentRuns, their Secrets and Events."""

    def __init__(
        self, api: client.ApiClient, *, namespaces: Sequence[str], instance: str, request_timeout: float
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._namespaces = list(namespaces)
        self._instance = instance
        self._timeout = request_timeout

    async def get(self, ref: ports.RunRef) -> ports.RunObject:
        with errors.translated(f"read AgentRun {ref}"):
            body = await self._custom.get_namespaced_custom_object(
                models.GROUP, models.VERSION, ref.namespace, models.PLURAL, ref.name, _request_timeout=self._timeout
            )
        return ports.RunObject.from_body(body)

    async def get_agent(self, namespace: str, name: str) -> ports.AgentObject:
        with errors.translated(f"read Agent {namespace}/{name}"):
            body = await self._custom.get_namespaced_custom_object(
                models.GROUP, models.VERSION, namespace, models.AGENT_PLURAL, name, _request_timeout=self._timeout
            )
        return agent_object(body)

    async def _pages(self, namespace: str | None, *, finished: bool = False) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "label_selector": f"{models.FINISHED_LABEL}=true" if finished else f"!{models.FINISHED_LABEL}",
                "limit": LIST_PAGE,
                "_request_timeout": self._timeout,
            }
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

    async def list_running(self) -> list[ports.RunObject]:
        running: list[ports.RunObject] = []
        scopes: list[str | None] = [*self._namespaces] or [None]
        for namespace in scopes:
            async for item in self._pages(namespace):
                # Cheap pre-filter: most runs are finished and need no parsing at all.
                if (item.get("status") or {}).get("phase") == models.Phase.RUNNING.value:
                    running.append(ports.RunObject.from_body(item))
        return running

    async def finished_runs(self) -> AsyncIterator[ports.RunObject]:
        scopes: list[str | None] = [*self._namespaces] or [None]
        for namespace in scopes:
            async for item in self._pages(namespace, finished=True):
                yield ports.RunObject.from_body(item)

    async def write_status(self, run: ports.RunObject, status: models.AgentRunStatus) -> ports.RunObject:
        with errors.translated(f"write status of AgentRun {run.ref}"):
            body = await self._custom.patch_namespaced_custom_object_status(
                models.GROUP,
                models.VERSION,
                run.ref.namespace,
                models.PLURAL,
                run.ref.name,
                status_patch(status, run.resource_version),
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            )
        return ports.RunObject.from_body(body)

    async def set_finalizer(self, run: ports.RunObject, present: bool) -> ports.RunObject | None:
        others = [f for f in run.finalizers if f != models.FINALIZER]
        finalizers = [*others, models.FINALIZER] if present else others
        metadata: dict[str, Any] = {"resourceVersion": run.resource_version, "finalizers": finalizers}
        if not present and run.status.phase.terminal:
            # Finished with: from now on the operator's watch (kube.watch) no longer sends this run.
            metadata["labels"] = {models.FINISHED_LABEL: "true"}
        patch = {"metadata": metadata}
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
                    _request_timeout=self._timeout,
                )
        except ports.NotFound:
            return None
        return ports.RunObject.from_body(body)

    async def delete_run(self, ref: ports.RunRef) -> None:
        body = {"preconditions": {"uid": ref.uid}, "propagationPolicy": "Background"}
        try:
            with errors.translated(f"delete AgentRun {ref}"):
                await self._custom.delete_namespaced_custom_object(
                    models.GROUP, models.VERSION, ref.namespace, models.PLURAL, ref.name, body=body,
                    _request_timeout=self._timeout,
                )  # fmt: skip
        except ports.Conflict:
            raise ports.NotFound(f"AgentRun {ref} was replaced by a namesake") from None

    async def store_payload(self, run: ports.RunObject, purpose: str, payload: str) -> models.ContentRef:
        name = payload_secret_name(run, purpose)
        owner = Owner(models.KIND, run.ref.name, run.ref.uid)
        return await self._put_owned_secret(
            run.ref.namespace, name, f"{purpose}.json", payload, owner, child_labels(run),
            what=f"store {purpose} of AgentRun {run.ref}",
        )  # fmt: skip

    async def put_run_secret(self, run: ports.RunObject, name: str, key: str, payload: str) -> None:
        """A Secret owned by the run (a runner Pod's input); someone else's Secret of that name is left alone."""
        owner = Owner(models.KIND, run.ref.name, run.ref.uid)
        await self._put_owned_secret(
            run.ref.namespace,
            name,
            key,
            payload,
            owner,
            child_labels(run),
            what=f"store the input of AgentRun {run.ref}",
        )

    async def store_thread_history(self, thread: ports.ThreadObject, payload: str) -> models.ContentRef:
        suffix = f"-history-{thread.uid[:8]}"
        name = thread.name[: 253 - len(suffix)] + suffix
        owner = Owner(models.THREAD_KIND, thread.name, thread.uid)
        labels = {models.MANAGED_BY_LABEL: models.MANAGED_BY_VALUE, f"{models.GROUP}/thread": thread.name}
        return await self._put_owned_secret(
            thread.namespace, name, "history.json", payload, owner, labels,
            what=f"store the history of AgentThread {thread.namespace}/{thread.name}",
        )  # fmt: skip

    async def _put_owned_secret(
        self,
        namespace: str,
        name: str,
        key: str,
        payload: str,
        owner: Owner,
        labels: dict[str, str],
        *,
        what: str,
    ) -> models.ContentRef:
        """Create the Secret, or update it when ``owner`` owns it; never touch anyone else's."""
        data = {key: base64.b64encode(payload.encode()).decode()}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [owner.reference()],
            },
            "type": "Opaque",
            "data": data,
        }
        action = f"{what} in Secret {name}"
        try:
            with errors.translated(action):
                await self._core.create_namespaced_secret(namespace, secret, _request_timeout=self._timeout)
        except ports.Conflict:
            # It exists: an earlier try created it (its reply lost), an earlier turn did, or someone else.
            with errors.translated(action):
                existing = await self._core.read_namespaced_secret(name, namespace, _request_timeout=self._timeout)
            if not owner.owns(existing.metadata):
                raise ports.NotOwned(
                    f"{action}: a Secret of that name exists and is not owned by the {owner.kind}; it is left untouched"
                ) from None
            patch = {"metadata": {"resourceVersion": existing.metadata.resource_version}, "data": data}
            with errors.translated(action):
                await self._core.patch_namespaced_secret(
                    name, namespace, patch, _content_type=MERGE_PATCH, _request_timeout=self._timeout
                )
        return models.ContentRef(kind="Secret", name=name, key=key, size_bytes=len(payload.encode()))

    async def get_thread(self, namespace: str, name: str) -> ports.ThreadObject:
        with errors.translated(f"read AgentThread {namespace}/{name}"):
            body = await self._custom.get_namespaced_custom_object(
                models.GROUP, models.VERSION, namespace, models.THREAD_PLURAL, name, _request_timeout=self._timeout
            )
        return ports.ThreadObject.from_body(body)

    async def write_thread_status(
        self, thread: ports.ThreadObject, status: models.AgentThreadStatus
    ) -> ports.ThreadObject:
        wire = status.to_wire()
        patch = {
            "metadata": {"resourceVersion": thread.resource_version},
            "status": {name: wire.get(name) for name in THREAD_STATUS_FIELDS},
        }
        with errors.translated(f"write status of AgentThread {thread.namespace}/{thread.name}"):
            body = await self._custom.patch_namespaced_custom_object_status(
                models.GROUP, models.VERSION, thread.namespace, models.THREAD_PLURAL, thread.name, patch,
                _content_type=MERGE_PATCH, _request_timeout=self._timeout,
            )  # fmt: skip
        return ports.ThreadObject.from_body(body)

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        with errors.translated(f"read Secret {namespace}/{name}"):
            secret = await self._core.read_namespaced_secret(name, namespace, _request_timeout=self._timeout)
        value = (secret.data or {}).get(key)
        if value is None:
            raise ports.NotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(value).decode()

    async def post_kube_event(
        self,
        run: ports.RunObject,
        event_type: ports.KubeEventType,
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
            "type": event_type.value,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": models.MANAGED_BY_VALUE},
            "reportingComponent": models.MANAGED_BY_VALUE,
            "reportingInstance": self._instance,
        }
        try:
            with errors.translated(f"post Event {reason} for AgentRun {run.ref}"):
                # The stored Event is not needed: building client models from the reply (every
                # timestamp parsed with dateutil) costs a burst a few percent of its CPU.
                response = await self._core.create_namespaced_event(
                    run.ref.namespace, event, _request_timeout=self._timeout, _preload_content=False
                )
                (await errors.checked(response)).release()
        except ports.ApiError as error:
            # Events are a courtesy to people running `kubectl describe`; the status is the record.
            logger.warning("%s", error)


async def watch_run(
    api: client.ApiClient, namespace: str, name: str, *, request_timeout: float = 30.0
) -> AsyncIterator[dict[str, Any]]:
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
                    models.GROUP, models.VERSION, namespace, models.PLURAL, name, _request_timeout=request_timeout
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
        except ports.Gone:
            resource_version = None


async def create_run(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create an AgentRun (``metadata.generateName`` gives it a fresh name); the object as stored."""
    custom = client.CustomObjectsApi(api)
    with errors.translated(f"create AgentRun in namespace {namespace}"):
        body: dict[str, Any] = await custom.create_namespaced_custom_object(
            models.GROUP, models.VERSION, namespace, models.PLURAL, manifest, _request_timeout=30
        )
    return body


async def read_thread(api: client.ApiClient, namespace: str, name: str) -> ports.ThreadObject:
    """One AgentThread; raises NotFound."""
    custom = client.CustomObjectsApi(api)
    with errors.translated(f"read AgentThread {namespace}/{name}"):
        body = await custom.get_namespaced_custom_object(
            models.GROUP, models.VERSION, namespace, models.THREAD_PLURAL, name, _request_timeout=30
        )
    return ports.ThreadObject.from_body(body)
