"""The operator's watch on AgentRuns: only the runs it still has to act on.

When the operator lets go of a finished run it labels it ``agentrun.dev/finished``
(in the same write that removes its finalizer). This watch lists and watches with the
server-side selector ``!agentrun.dev/finished``, so finished runs are never sent to
the operator again: the API server drops them from the stream (a run that stops
matching the selector arrives once as ``DELETED``), and a restart lists only the
unfinished ones. Nothing here keeps an object: every event is handed on and dropped,
so the operator's memory follows active runs, not the runs kept in the cluster.

Lists are paged; the watch resumes from the newest resourceVersion it has seen
(bookmarks included) and lists again when the API server answers ``410 Gone``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes_asyncio import client

from agentrun.api import models
from agentrun.kube import errors, streams
from agentrun.runtime import ports

logger = logging.getLogger(__name__)

UNFINISHED = f"!{models.FINISHED_LABEL}"
LIST_PAGE = 500
WATCH_SECONDS = 300
RETRY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Handlers:
    """Where events go: a run changed, a run is gone, and the set of runs a fresh list found."""

    changed: Callable[[dict[str, Any]], None]
    gone: Callable[[dict[str, Any]], None]
    listed: Callable[[str | None, set[ports.RunRef]], None]
    """After each (re)list of a scope (a namespace, or ``None`` for the cluster): the runs in it."""


class RunWatch:
    """List-then-watch of the unfinished AgentRuns in the watched namespaces."""

    def __init__(
        self, api: client.ApiClient, *, namespaces: Sequence[str], request_timeout: float, handlers: Handlers
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._scopes: list[str | None] = [*namespaces] or [None]
        self._timeout = request_timeout
        self._handlers = handlers
        self.synced = asyncio.Event()
        """Set once every scope has been listed."""
        self._listed: set[str | None] = set()

    async def run(self) -> None:
        """Follow every scope until cancelled."""
        async with asyncio.TaskGroup() as group:
            for scope in self._scopes:
                group.create_task(self._follow(scope), name=f"watch AgentRuns in {scope or 'all namespaces'}")

    async def _follow(self, scope: str | None) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(scope)
                version = await self._watch(scope, version)
            except ports.Gone:
                version = None  # too old for the API server: list again
            except ports.ApiError as error:
                logger.warning("watch of AgentRuns in %s interrupted, resuming: %s", scope or "all namespaces", error)
                await asyncio.sleep(RETRY_SECONDS)

    async def _list(self, scope: str | None) -> str:
        """Hand on every unfinished run of ``scope``, page by page; the list's resourceVersion."""
        present: set[ports.RunRef] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": UNFINISHED, "limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            with errors.translated(f"list AgentRuns in {scope or 'all namespaces'}"):
                page = await self._call(scope, kwargs, request_timeout=self._timeout)
            for item in page.get("items") or []:
                present.add(ports.RunRef.from_body(item))
                self._handlers.changed(item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self._handlers.listed(scope, present)
        self._listed.add(scope)
        if len(self._listed) == len(self._scopes):
            self.synced.set()
        return str(metadata.get("resourceVersion", ""))

    async def _watch(self, scope: str | None, version: str) -> str:
        kwargs: dict[str, Any] = {
            "label_selector": UNFINISHED,
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": version,
            "timeout_seconds": WATCH_SECONDS,
            "_preload_content": False,
        }
        with errors.translated(f"watch AgentRuns in {scope or 'all namespaces'}"):
            response = await errors.checked(await self._call(scope, kwargs, request_timeout=WATCH_SECONDS + 30))
            try:
                async for line in streams.lines(response.content):
                    if line.strip():
                        version = self._dispatch(json.loads(line), version)
            finally:
                response.release()
        return version

    def _dispatch(self, event: dict[str, Any], version: str) -> str:
        kind = event.get("type")
        body = event.get("object") or {}
        if kind == "ERROR":
            if body.get("code") == 410:
                raise ports.Gone(str(body.get("message", "resource version too old")))
            raise ports.Unavailable(f"watch error: {body.get('message', body)}")
        version = str((body.get("metadata") or {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED"):
            self._handlers.changed(body)
        elif kind == "DELETED":
            self._handlers.gone(body)
        return version

    async def _call(self, scope: str | None, kwargs: dict[str, Any], *, request_timeout: float) -> Any:
        if scope is None:
            return await self._custom.list_cluster_custom_object(
                models.GROUP, models.VERSION, models.PLURAL, _request_timeout=request_timeout, **kwargs
            )
        return await self._custom.list_namespaced_custom_object(
            models.GROUP, models.VERSION, scope, models.PLURAL, _request_timeout=request_timeout, **kwargs
        )
