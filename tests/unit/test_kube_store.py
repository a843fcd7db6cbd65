"""The kube adapter: every request carries a timeout; offload Secrets are the run's own."""

from __future__ import annotations

import datetime
import types
from typing import Any

import pytest

from agentrun.api import models
from agentrun.kube import store as kube_store
from agentrun.runtime import ports

TIMEOUT = 7.5


class Recording:
    """Stands in for a kubernetes-asyncio API class: records each call and its keyword arguments."""

    calls: list[tuple[str, dict[str, Any]]]

    def __init__(self, _api: object) -> None:
        self.calls = CALLS

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return RESPONSES.get(name, BODY)

        return call


class RawResponse:
    """An unparsed aiohttp answer, as kubernetes-asyncio returns it with ``_preload_content=False``."""

    def __init__(self, status: int, body: bytes = b"{}") -> None:
        self.status = status
        self.reason = "Created" if status < 300 else "Forbidden"
        self.body = body
        self.released = False

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        self.released = True


CALLS: list[tuple[str, dict[str, Any]]] = []
BODY = {"metadata": {"name": "a", "namespace": "ns", "uid": "uid-12345678", "resourceVersion": "5"}, "spec": {}}
SECRET = types.SimpleNamespace(data={"k": "dmFsdWU="}, metadata=types.SimpleNamespace(owner_references=[]))
RESPONSES: dict[str, Any] = {
    "read_namespaced_secret": SECRET,
    "list_namespaced_custom_object": {"items": []},
    "create_namespaced_event": RawResponse(201),
}


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> kube_store.KubeRunStore:
    CALLS.clear()
    monkeypatch.setattr(kube_store.client, "CustomObjectsApi", Recording)
    monkeypatch.setattr(kube_store.client, "CoreV1Api", Recording)
    return kube_store.KubeRunStore(object(), namespaces=["ns"], instance="i", request_timeout=TIMEOUT)  # type: ignore[arg-type]


async def test_every_request_carries_the_request_timeout(adapter: kube_store.KubeRunStore) -> None:
    run = ports.RunObject.from_body(BODY)
    await adapter.get(run.ref)
    await adapter.list_running()
    await adapter.write_status(run, models.AgentRunStatus())
    await adapter.set_finalizer(run, True)
    await adapter.store_payload(run, "output", "{}")
    await adapter.read_secret("ns", "s", "k")
    await adapter.post_kube_event(run, ports.KubeEventType.NORMAL, "Started", "m", datetime.datetime.now(datetime.UTC))

    assert len(CALLS) == 7
    assert all(kwargs.get("_request_timeout") == TIMEOUT for _name, kwargs in CALLS), CALLS


def test_offload_secret_names_carry_the_run_uid() -> None:
    run = ports.RunObject.from_body(BODY)
    assert kube_store.payload_secret_name(run, "output") == "a-output-uid-1234"
    long = ports.RunObject.from_body({**BODY, "metadata": {**BODY["metadata"], "name": "x" * 253}})
    assert len(kube_store.payload_secret_name(long, "session")) == 253


async def test_a_secret_the_run_does_not_own_is_never_written(
    adapter: kube_store.KubeRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ports.RunObject.from_body(BODY)

    async def exists(*args: Any, **kwargs: Any) -> Any:
        raise ports.Conflict("AlreadyExists")

    recording = Recording(None)
    monkeypatch.setattr(adapter, "_core", recording)
    monkeypatch.setattr(recording, "create_namespaced_secret", exists, raising=False)

    with pytest.raises(ports.NotOwned, match="not owned by the AgentRun"):
        await adapter.store_payload(run, "output", "{}")
    assert [name for name, _ in CALLS] == ["read_namespaced_secret"]


async def test_an_event_reply_is_released_unparsed_and_an_error_still_counts(
    adapter: kube_store.KubeRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ports.RunObject.from_body(BODY)
    accepted = RawResponse(201)
    await adapter.post_kube_event(run, ports.KubeEventType.NORMAL, "Started", "m", datetime.datetime.now(datetime.UTC))
    assert CALLS[-1][1]["_preload_content"] is False
    refused = RawResponse(403, b'{"kind": "Status", "message": "events is forbidden"}')
    monkeypatch.setitem(RESPONSES, "create_namespaced_event", refused)
    # A refused Event is logged, never raised: the status is the record.
    await adapter.post_kube_event(run, ports.KubeEventType.NORMAL, "Started", "m", datetime.datetime.now(datetime.UTC))
    assert refused.released
    with pytest.raises(ports.Forbidden, match="events is forbidden"), kube_store.errors.translated("post Event"):
        await kube_store.errors.checked(refused)  # type: ignore[arg-type]
    monkeypatch.setitem(RESPONSES, "create_namespaced_event", accepted)
    await adapter.post_kube_event(run, ports.KubeEventType.NORMAL, "Started", "m", datetime.datetime.now(datetime.UTC))
    assert accepted.released
