"""Operator configuration, from environment variables (``AGENTRUN_*``) and flags."""

from __future__ import annotations

import enum
import os
import socket
from typing import Annotated

import pydantic
import pydantic_settings

from agentrun.api import models


class LogFormat(enum.StrEnum):
    JSON = "json"
    TEXT = "text"


LEASE_JITTER = 1.2
"""Standbys stretch their retry period by up to this factor (see agentrun.kube.lease)."""


def _default_lease_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "default"


def _default_instance() -> str:
    # In a cluster the Downward API sets POD_NAME; elsewhere the host name identifies us.
    return os.environ.get("POD_NAME") or socket.gethostname()


class Settings(pydantic_settings.BaseSettings):
    """Everything an operator instance can be tuned with.

    Each field is an environment variable ``AGENTRUN_<NAME>`` and a flag
    ``--<name>`` of ``agentrun operator``; flags win over the environment.
    """

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="AGENTRUN_",
        cli_kebab_case=True,
        cli_prog_name="agentrun operator",
        cli_implicit_flags=True,
        extra="ignore",
        env_ignore_empty=True,  # an empty variable means "unset" (the chart renders unset values so)
    )

    namespaces: Annotated[list[str], pydantic_settings.NoDecode] = pydantic.Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated. Empty watches the whole cluster.",
    )
    instance: str = pydantic.Field(
        default_factory=_default_instance,
        description="Identity of this operator instance, recorded on the runs it owns.",
    )
    max_concurrent_runs: int = pydantic.Field(
        100, ge=1, description="Runs executing at once; further runs wait as Pending/Queued."
    )
    event_ring_size: int = pydantic.Field(
        50, ge=4, le=1000, description="Newest events kept in status.events; older ones are dropped."
    )
    status_budget_bytes: int = pydantic.Field(
        256 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest output or session snapshot written inline; larger ones go to an owned Secret.",
    )
    progress_interval_seconds: float = pydantic.Field(
        2.0, gt=0, description="Least time between two progress writes of one run (coalescing)."
    )
    shutdown_grace_seconds: float = pydantic.Field(
        15.0,
        gt=0,
        le=20,
        description="On SIGTERM, how long in-flight runs may finish before they are failed.",
    )
    lease_name: str = pydantic.Field(
        "agentrun-operator",
        min_length=1,
        max_length=253,
        description="The Lease that replicas elect their leader with; only its holder drives runs.",
    )
    lease_namespace: str = pydantic.Field(
        default_factory=_default_lease_namespace,
        min_length=1,
        description="Namespace of the Lease: the operator's own (POD_NAMESPACE), else the first watched one.",
    )
    lease_duration_seconds: float = pydantic.Field(
        10.0, ge=2, le=300, description="A Lease not renewed for this long, as a standby sees it, is taken over."
    )
    lease_renew_deadline_seconds: float = pydantic.Field(
        7.0, gt=0, description="The leader stops (and exits) when it could not renew its Lease for this long."
    )
    lease_retry_period_seconds: float = pydantic.Field(
        2.0, gt=0, description="How often the leader renews and standbys check the Lease."
    )
    resync_interval_seconds: float = pydantic.Field(
        30.0, gt=0, le=3600, description="How often the leader re-reads the runs it owns, so none is forgotten."
    )
    default_timeout_seconds: float = pydantic.Field(
        3600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="Deadline of runs that set no timeoutSeconds: nothing waits forever.",
    )
    default_ttl_seconds_after_finished: int | None = pydantic.Field(
        None,
        ge=0,
        description=(
            "Delete finished runs (and what they own) this long after they finish, "
            "unless a run sets its own ttlSecondsAfterFinished. Empty keeps them."
        ),
    )
    max_limits: models.Limits | None = pydantic.Field(
        None,
        description="Ceiling on every run's spec.limits (JSON); a run without a limit gets the ceiling as its limit.",
    )
    default_runner_mode: models.RunnerMode = pydantic.Field(
        models.RunnerMode.TASK,
        description="Where runs execute when spec.runner.mode is unset: `task` (in the operator) or `pod`.",
    )
    runner_image: str = pydantic.Field(
        "",
        description="Image of runner Pods when a run names none: the operator's own image (the chart sets it).",
    )
    runner_image_pull_policy: str = pydantic.Field(
        "IfNotPresent", description="imagePullPolicy of runner Pods: Always, IfNotPresent or Never."
    )
    runner_resources: models.ResourceRequirements | None = pydantic.Field(
        None, description="CPU and memory of runner Pods when a run sets none (JSON: {requests, limits})."
    )
    runner_start_timeout_seconds: float = pydantic.Field(
        120.0,
        gt=0,
        description="How long a runner Pod's image may fail to pull before the run fails with ImageUnavailable.",
    )
    api_request_timeout_seconds: float = pydantic.Field(
        30.0, gt=0, le=300, description="Timeout of each request to the API server (watches excepted)."
    )
    liveness_port: int = pydantic.Field(8080, ge=0, le=65535, description="Port of /healthz; 0 disables it.")
    metrics_port: int = pydantic.Field(
        9090, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables it."
    )
    log_level: str = pydantic.Field("INFO", description="Python log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = pydantic.Field(LogFormat.JSON, description="`json` for production, `text` for people.")

    @pydantic.field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @pydantic.model_validator(mode="after")
    def _lease_is_consistent(self) -> Settings:
        if "lease_namespace" not in self.model_fields_set and not os.environ.get("POD_NAMESPACE") and self.namespaces:
            # Out of a cluster, replicas that watch the same namespaces meet in the first of them.
            self.lease_namespace = self.namespaces[0]
        duration, deadline, retry = (
            self.lease_duration_seconds,
            self.lease_renew_deadline_seconds,
            self.lease_retry_period_seconds,
        )
        if not duration > deadline > LEASE_JITTER * retry:
            # The leader must give up before a standby may take over, and retry before giving up.
            raise ValueError(
                "lease timing needs lease_duration_seconds > lease_renew_deadline_seconds"
                f" > {LEASE_JITTER} x lease_retry_period_seconds, got {duration:g} / {deadline:g} / {retry:g}"
            )
        return self
