"""Operator settings from AGENTRUN_* environment variables."""

from __future__ import annotations

import pydantic
import pytest

from agentrun import settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a, b", ["a", "b"], id="comma-and-space"),
        pytest.param("team-a", ["team-a"], id="one"),
        pytest.param(" a ,, b ,", ["a", "b"], id="empty-items-dropped"),
        pytest.param("", [], id="empty-watches-all"),
    ],
)
def test_namespaces_from_a_comma_separated_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("AGENTRUN_NAMESPACES", value)
    assert settings.Settings().namespaces == expected


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_MAX_CONCURRENT_RUNS", "3")
    monkeypatch.setenv("AGENTRUN_INSTANCE", "op-7")
    monkeypatch.setenv("AGENTRUN_LOG_FORMAT", "text")
    loaded = settings.Settings()
    assert (loaded.max_concurrent_runs, loaded.instance, loaded.log_format) == (3, "op-7", settings.LogFormat.TEXT)


def test_instance_defaults_to_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "agentrun-operator-7d9c-abcde")
    assert settings.Settings().instance == "agentrun-operator-7d9c-abcde"


def test_defaults_are_consistent() -> None:
    loaded = settings.Settings()
    assert loaded.namespaces == []
    assert loaded.lease_namespace == "default"
    assert (loaded.lease_duration_seconds, loaded.lease_renew_deadline_seconds) == (10, 7)
    assert loaded.shutdown_grace_seconds <= 20


def test_the_lease_lives_in_the_operators_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "agentrun-system")
    assert settings.Settings(namespaces=["team-a"]).lease_namespace == "agentrun-system"


def test_out_of_a_cluster_the_lease_lives_in_the_first_watched_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv("AGENTRUN_NAMESPACES", "team-a,team-b")
    assert settings.Settings().lease_namespace == "team-a"
    assert settings.Settings(lease_namespace="ops").lease_namespace == "ops"


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [
        pytest.param(10, 10, 2, id="deadline-equals-duration"),
        pytest.param(10, 15, 2, id="deadline-beyond-duration"),
        pytest.param(15, 2, 2, id="retry-not-below-deadline"),
        pytest.param(15, 10, 9, id="jittered-retry-beyond-deadline"),
    ],
)
def test_lease_timing_lets_the_leader_give_up_before_a_standby_takes_over(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(pydantic.ValidationError, match="lease_duration_seconds > lease_renew_deadline_seconds"):
        settings.Settings(
            lease_duration_seconds=duration, lease_renew_deadline_seconds=deadline, lease_retry_period_seconds=retry
        )


def test_lease_timing_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS", "20")
    with pytest.raises(pydantic.ValidationError, match="lease timing"):
        settings.Settings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("max_concurrent_runs", 0, id="no-slots"),
        pytest.param("event_ring_size", 3, id="ring-too-small"),
        pytest.param("shutdown_grace_seconds", 25, id="grace-beyond-kubelet"),
        pytest.param("liveness_port", 70000, id="port-out-of-range"),
    ],
)
def test_out_of_range_values_are_rejected(field: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        settings.Settings(**{field: value})
