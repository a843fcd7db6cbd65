"""Objects crossing the store boundary: parsing, and the fake store's contract."""

from __future__ import annotations

import fakes
import pytest

from agentrun.api import models
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
