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
    assert loaded.heartbeat_timeout_seconds > 2 * loaded.heartbeat_interval_seconds
    assert loaded.shutdown_grace_seconds <= 20


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [
        pytest.param(15, 30, id="exactly-twice"),
        pytest.param(15, 20, id="less-than-twice"),
        pytest.param(10, 5, id="shorter-than-the-interval"),
    ],
)
def test_heartbeat_timeout_must_exceed_twice_the_interval(interval: float, timeout: float) -> None:
    with pytest.raises(pydantic.ValidationError, match="must exceed twice heartbeat_interval_seconds"):
        settings.Settings(heartbeat_interval_seconds=interval, heartbeat_timeout_seconds=timeout)


def test_heartbeat_timeout_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_HEARTBEAT_TIMEOUT_SECONDS", "20")
    with pytest.raises(pydantic.ValidationError, match="heartbeat_timeout_seconds"):
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
