"""Reading the Lease: error replies are errors, whether or not kubernetes-asyncio raised them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from agentrun.kube import lease

LEASE = {"metadata": {"name": "agentrun-operator", "namespace": "ns", "resourceVersion": "7"}, "spec": {}}


class Reply:
    """An unpreloaded aiohttp reply, as kubernetes-asyncio returns it with ``_preload_content=False``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.reason = {200: "OK", 403: "Forbidden", 404: "Not Found"}[status]
        self._body = body
        self.released = False

    async def json(self) -> dict[str, Any]:
        return self._body

    async def text(self) -> str:
        return json.dumps(self._body)

    async def read(self) -> bytes:
        return json.dumps(self._body).encode()

    def release(self) -> None:
        self.released = True


class Leases:
    """Stands in for CoordinationV1Api: answers every read with one reply."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    async def read_namespaced_lease(self, *_: Any, **__: Any) -> Reply:
        return self.reply


def elector(reply: Reply) -> lease.LeaderElector:
    found = lease.LeaderElector(
        object(),  # type: ignore[arg-type]
        namespace="ns",
        name="agentrun-operator",
        identity="me",
        timing=lease.Timing(),
        request_timeout=5,
    )
    found._leases = Leases(reply)  # type: ignore[assignment]
    return found


def status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code}


async def test_a_lease_is_read_as_it_is() -> None:
    assert await elector(Reply(200, LEASE))._read() == LEASE


async def test_a_missing_lease_is_none() -> None:
    reply = Reply(404, status(404, "NotFound"))
    assert await elector(reply)._read() is None
    assert reply.released


async def test_a_refused_read_raises() -> None:
    with pytest.raises(ApiException) as raised:
        await elector(Reply(403, status(403, "Forbidden")))._read()
    assert raised.value.status == 403
