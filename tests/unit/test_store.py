"""Objects crossing the store boundary: parsing, and the fake store's contract."""

from __future__ import annotations

import json

import fakes
import pytest
from kubernetes_asyncio.client import exceptions

from agentrun.api import models
from agentrun.kube import errors as kube_errors
from agentrun.runtime import store


def body(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "metadata": {
            "name": "a",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": 42,
            "generation": 2,
            "finalizers": [models.FINALIZER, "other/keep"],
        },
        "spec": fakes.echo_spec(),
        "status": {"phase": "Running", "reason": "Running"},
    }
    document.update(overrides)
    return document


def test_from_body_parses_metadata_spec_and_status() -> None:
    run = store.RunObject.from_body(body())
    assert run.ref == store.RunRef("ns", "a")
    assert run.ref.uid == "u-1"
    assert str(run.ref) == "ns/a"
    assert run.resource_version == "42"
    assert run.generation == 2
    assert run.has_finalizer
    assert not run.deleting
    assert run.spec is not None
    assert run.spec_error is None
    assert run.status.phase is models.Phase.RUNNING


def test_bad_spec_is_kept_as_an_error_without_its_values() -> None:
    run = store.RunObject.from_body(body(spec={"composition": {"layers": "sk-secret-value"}}))
    assert run.spec is None
    assert run.spec_error is not None
    assert run.spec_error.startswith("spec is invalid: composition.layers:")
    assert "sk-secret-value" not in run.spec_error


def test_unreadable_status_starts_afresh() -> None:
    run = store.RunObject.from_body(body(status={"phase": "Exploded"}))
    assert run.status == models.AgentRunStatus()


def test_deletion_timestamp_means_deleting() -> None:
    document = body()
    metadata = document["metadata"]
    assert isinstance(metadata, dict)
    metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert store.RunObject.from_body(document).deleting


def test_refs_ignore_the_uid_when_compared() -> None:
    assert store.RunRef("ns", "a", "old") == store.RunRef("ns", "a", "new")
    assert hash(store.RunRef("ns", "a", "old")) == hash(store.RunRef("ns", "a", "new"))


# The fake must behave like the API server where the runtime relies on it.


async def test_fake_store_guards_writes_with_the_resource_version() -> None:
    run_store = fakes.FakeRunStore()
    first = run_store.add("a")
    written = await run_store.write_status(first, models.AgentRunStatus(message="one"))
    assert int(written.resource_version) > int(first.resource_version)
    with pytest.raises(store.Conflict):
        await run_store.write_status(first, models.AgentRunStatus(message="stale"))
    with pytest.raises(store.Conflict):
        await run_store.set_finalizer(first, True)
    assert run_store.object("a").status.message == "one"


async def test_fake_store_reports_missing_objects() -> None:
    run_store = fakes.FakeRunStore()
    run = run_store.add("a")
    run_store.delete("a")
    with pytest.raises(store.NotFound):
        await run_store.get(run.ref)
    with pytest.raises(store.NotFound):
        await run_store.write_status(run, models.AgentRunStatus())
    assert await run_store.set_finalizer(run, False) is None


async def test_fake_store_lists_only_running_runs() -> None:
    run_store = fakes.FakeRunStore()
    run_store.add("pending")
    run_store.add("running", status=models.AgentRunStatus(phase=models.Phase.RUNNING))
    run_store.add("done", status=models.AgentRunStatus(phase=models.Phase.SUCCEEDED))
    assert [run.ref.name for run in await run_store.list_running()] == ["running"]


def _api_error(status: int) -> exceptions.ApiException:
    error = exceptions.ApiException(status=status, reason="x")
    error.body = json.dumps({"kind": "Status", "message": f"server says {status}"})
    return error


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(409, store.Conflict, id="conflict"),
        pytest.param(404, store.NotFound, id="not-found"),
        pytest.param(410, store.Gone, id="gone"),
        pytest.param(403, store.Forbidden, id="forbidden"),
        pytest.param(422, store.Rejected, id="rejected"),
        pytest.param(429, store.Unavailable, id="throttled"),
        pytest.param(503, store.Unavailable, id="unavailable"),
    ],
)
def test_api_errors_are_classified_with_the_servers_message(status: int, expected: type[store.StoreError]) -> None:
    with (
        pytest.raises(expected, match=f"^patch AgentRun ns/a: server says {status}$") as raised,
        kube_errors.translated("patch AgentRun ns/a"),
    ):
        raise _api_error(status)
    # Whatever handles NotFound also handles an expired watch, unless it asks for Gone.
    assert isinstance(raised.value, store.NotFound) == (status in (404, 410))
