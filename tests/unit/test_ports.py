"""Objects crossing the store boundary: parsing, and the fake store's contract."""

from __future__ import annotations

import json

import fakes
import pytest
from kubernetes_asyncio.client import exceptions

from agentrun.api import models
from agentrun.kube import errors as kube_errors
from agentrun.runtime import ports


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
    run = ports.RunObject.from_body(body())
    assert run.ref == ports.RunRef("ns", "a", "u-1")
    assert str(run.ref) == "ns/a"
    assert run.resource_version == "42"
    assert run.generation == 2
    assert run.has_finalizer
    assert not run.deleting
    assert run.spec is not None
    assert run.spec_error is None
    assert run.status.phase is models.Phase.RUNNING


def test_bad_spec_is_kept_as_an_error_without_its_values() -> None:
    run = ports.RunObject.from_body(body(spec={"composition": {"layers": "sk-secret-value"}}))
    assert run.spec is None
    assert run.spec_error is not None
    assert run.spec_error.startswith("spec is invalid: composition.layers:")
    assert "sk-secret-value" not in run.spec_error


FINISHED = {
    "phase": "Succeeded",
    "reason": "Succeeded",
    "output": "done",
    "completionTime": "2025-01-01T12:00:00.000000Z",
    "eventCount": 2,
}


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"retryCount": 3}, id="unknown-top-level-field"),
        pytest.param({"runner": {"mode": "task", "instance": "x", "podIP": "10.0.0.1"}}, id="unknown-nested-field"),
        pytest.param(
            {
                "attempts": [
                    {"number": 1, "mode": "task", "instance": "x", "startTime": "2025-01-01T12:00:00Z", "exitCode": 0}
                ]
            },
            id="unknown-attempt-field",
        ),
        pytest.param({"usage": {"requests": 1, "cachedTokens": 7}}, id="unknown-usage-field"),
        pytest.param(
            {"events": [{"id": 1, "type": "run_started", "time": "2025-01-01T12:00:00Z", "severity": "info"}]},
            id="unknown-event-field",
        ),
    ],
)
def test_fields_from_another_version_are_ignored_and_the_run_stays_finished(extra: dict[str, object]) -> None:
    run = ports.RunObject.from_body(body(status={**FINISHED, **extra}))
    assert run.status.phase is models.Phase.SUCCEEDED
    assert run.status.output == "done"
    assert run.status_problems == ()
    assert run.phase_readable


@pytest.mark.parametrize(
    ("odd", "problem"),
    [
        pytest.param({"usage": {"requests": "many"}}, "usage", id="unreadable-usage"),
        pytest.param({"conditions": "all good"}, "conditions", id="unreadable-conditions"),
        pytest.param({"events": [{"id": 0}]}, "events", id="unreadable-events"),
        pytest.param({"sessionSnapshot": {"schemaVersion": 2, "layers": []}}, "sessionSnapshot", id="newer-snapshot"),
    ],
)
def test_an_unreadable_field_never_resets_a_finished_run(odd: dict[str, object], problem: str) -> None:
    run = ports.RunObject.from_body(body(status={**FINISHED, **odd}))
    assert run.status.phase is models.Phase.SUCCEEDED
    assert run.status.completion_time is not None
    assert run.status_problems == (problem,)
    assert run.phase_readable


@pytest.mark.parametrize(
    "status", [pytest.param({"phase": "Retrying"}, id="unknown-phase"), pytest.param("text", id="not-an-object")]
)
def test_an_unknown_phase_is_not_readable(status: object) -> None:
    run = ports.RunObject.from_body(body(status=status))
    assert not run.phase_readable


def test_deletion_timestamp_means_deleting() -> None:
    document = body()
    metadata = document["metadata"]
    assert isinstance(metadata, dict)
    metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert ports.RunObject.from_body(document).deleting


def test_a_namesake_with_another_uid_is_another_run() -> None:
    assert ports.RunRef("ns", "a", "old") != ports.RunRef("ns", "a", "new")
    assert str(ports.RunRef("ns", "a", "old")) == "ns/a"


# The fake must behave like the API server where the runtime relies on it.


async def test_fake_store_guards_writes_with_the_resource_version() -> None:
    run_store = fakes.FakeRunStore()
    first = run_store.add("a")
    written = await run_store.write_status(first, models.AgentRunStatus(message="one"))
    assert int(written.resource_version) > int(first.resource_version)
    with pytest.raises(ports.Conflict):
        await run_store.write_status(first, models.AgentRunStatus(message="stale"))
    with pytest.raises(ports.Conflict):
        await run_store.set_finalizer(first, True)
    assert run_store.object("a").status.message == "one"


async def test_fake_store_reports_missing_objects() -> None:
    run_store = fakes.FakeRunStore()
    run = run_store.add("a")
    run_store.delete("a")
    with pytest.raises(ports.NotFound):
        await run_store.get(run.ref)
    with pytest.raises(ports.NotFound):
        await run_store.write_status(run, models.AgentRunStatus())
    assert await run_store.set_finalizer(run, False) is None


async def test_fake_store_can_apply_a_write_and_lose_its_reply() -> None:
    run_store = fakes.FakeRunStore()
    first = run_store.add("a")
    run_store.lose_next_replies(1)
    with pytest.raises(ports.Unavailable):
        await run_store.write_status(first, models.AgentRunStatus(message="applied"))
    assert run_store.object("a").status.message == "applied"


async def test_fake_store_keeps_status_fields_it_does_not_own() -> None:
    run_store = fakes.FakeRunStore()
    run_store.add("a")
    run_store._bodies["ns", "a"]["status"] = {"phase": "Pending", "futureField": {"x": 1}}
    await run_store.write_status(run_store.object("a"), models.AgentRunStatus(message="mine"))
    assert run_store._bodies["ns", "a"]["status"]["futureField"] == {"x": 1}


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
        pytest.param(409, ports.Conflict, id="conflict"),
        pytest.param(404, ports.NotFound, id="not-found"),
        pytest.param(410, ports.Gone, id="gone"),
        pytest.param(403, ports.Forbidden, id="forbidden"),
        pytest.param(422, ports.Rejected, id="rejected"),
        pytest.param(429, ports.Unavailable, id="throttled"),
        pytest.param(503, ports.Unavailable, id="unavailable"),
    ],
)
def test_api_errors_are_classified_with_the_servers_message(status: int, expected: type[ports.ApiError]) -> None:
    with (
        pytest.raises(expected, match=f"^patch AgentRun ns/a: server says {status}$") as raised,
        kube_errors.translated("patch AgentRun ns/a"),
    ):
        raise _api_error(status)
    # Whatever handles NotFound also handles an expired watch, unless it asks for Gone.
    assert isinstance(raised.value, ports.NotFound) == (status in (404, 410))
