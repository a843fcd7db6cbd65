"""Leader election on a ``coordination.k8s.io/v1`` Lease.

Several operator replicas share one Lease; its holder is the leader, the only instance
that admits and drives runs. The others stand by and take over when the holder stops
renewing it.

Whether the Lease is still held is judged from *locally observed* renewals, as
client-go's leader election does: a standby remembers when (on its own monotonic
clock) it last saw the Lease record change, and takes the Lease only after it has seen
no change for a whole lease duration. The ``renewTime`` written by another host is
never compared with the local clock, so instances whose clocks disagree by minutes
neither depose each other nor wait for ever.

The holder renews every retry period. If it cannot renew for ``renew_deadline`` (less
than the lease duration), or finds the Lease deleted or held by someone else, it has
lost leadership: :class:`LeadershipLost` is raised and the caller must stop acting at
once. Because the deadline is shorter than the duration, the old leader has stopped
before any standby can take over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from agentrun import settings
from agentrun.kube import errors

logger = logging.getLogger(__name__)

JITTER = settings.LEASE_JITTER
"""Retry periods are stretched by up to this factor so that standbys do not poll in step."""


TRANSIENT = (ApiException, aiohttp.ClientError, OSError, TimeoutError)
"""What a Lease request may fail with and be tried again: the API server's answer, or none."""


class LeadershipLost(RuntimeError):
    """This instance no longer holds the Lease: it must stop acting immediately."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long a Lease lasts unrenewed, how long the holder keeps trying, how often everyone polls.

    They must satisfy ``duration > renew_deadline > JITTER x retry_period`` (the
    operator's settings check it), so that a leader gives up before a standby may take over.
    """

    duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0


@dataclasses.dataclass(frozen=True)
class Record:
    """The parts of a Lease's spec that leader election reads and writes."""

    holder: str | None
    duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Record:
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration_seconds=spec.get("leaseDurationSeconds"),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


def micro_time(now: datetime.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Observation:
    """What this instance has seen of the Lease, timed by its own monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.record: Record | None = None
        self.seen_at: float | None = None

    def saw(self, record: Record) -> None:
        if record != self.record:
            self.record = record
            self.seen_at = self._clock()

    def held_by_another(self, me: str, duration: float) -> bool:
        """Someone else holds the Lease and has renewed it within ``duration``, as far as we have seen."""
        if self.record is None or self.record.holder in (None, me) or self.seen_at is None:
            return False
        return self._clock() < self.seen_at + duration

    def recently_held(self, duration: float) -> bool:
        """A holder was seen renewing within ``duration`` (the Lease may just have been deleted)."""
        held = self.record is not None and self.record.holder is not None
        return held and self.seen_at is not None and self._clock() < self.seen_at + duration


class LeaderElector:
    """Acquires, renews and releases one Lease for one instance identity."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        request_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._timeout = min(request_timeout, timing.renew_deadline)
        self._clock = clock
        self._wall_clock = wall_clock
        self.observation = Observation(clock)
        self.leading = False
        self.attempted = asyncio.Event()
        """Set once the first attempt to acquire has an answer (held by us or by someone else)."""

    async def acquire(self) -> None:
        """Return once this instance holds the Lease."""
        logger.info("waiting to lead: Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self.leading = True
                    self.attempted.set()
                    logger.info("leading: acquired Lease %s/%s", self.namespace, self.name)
                    return
                self.attempted.set()
            except TRANSIENT as error:
                logger.warning("could not read or take Lease %s/%s: %s", self.namespace, self.name, _brief(error))
            await asyncio.sleep(self._jittered())

    async def hold(self) -> None:
        """Renew the Lease until leadership is lost, then raise :class:`LeadershipLost`."""
        assert self.leading, "hold() after acquire()"
        last_renewal = self._clock()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            try:
                async with asyncio.timeout(max(0.1, last_renewal + self.timing.renew_deadline - self._clock())):
                    renewed = await self._try_acquire_or_renew()
            except LeadershipLost:
                self.leading = False
                raise
            except TRANSIENT as error:
                logger.warning("could not renew Lease %s/%s: %s", self.namespace, self.name, _brief(error))
                renewed = False
            if renewed:
                last_renewal = self._clock()
            elif self._clock() - last_renewal >= self.timing.renew_deadline:
                self.leading = False
                raise LeadershipLost(
                    f"Lease {self.namespace}/{self.name} not renewed for {self.timing.renew_deadline:g}s"
                )

    async def release(self) -> None:
        """Give the Lease up (after the drain), so that a standby takes over without waiting."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self._read()
            if lease is None or Record.from_spec(lease.get("spec") or {}).holder != self.identity:
                return
            now = micro_time(self._wall_clock())
            record = Record(None, 1, now, now, Record.from_spec(lease["spec"]).transitions)
            await self._replace(lease, record)
            logger.info("released Lease %s/%s", self.namespace, self.name)
        except TRANSIENT as error:
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, _brief(error))

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time(self._wall_clock())
        duration = int(self.timing.duration)
        lease = await self._read()
        if lease is None:
            if self.leading:
                raise LeadershipLost(f"Lease {self.namespace}/{self.name} was deleted")
            if self.observation.recently_held(self.timing.duration):
                return False  # its holder may not have noticed yet: wait for the lease duration to pass
            record = Record(self.identity, duration, now, now, 0)
            created = await self._create(record)
            if created:
                self.observation.saw(record)
            return created
        current = Record.from_spec(lease.get("spec") or {})
        self.observation.saw(current)
        if self.leading and current.holder != self.identity:
            raise LeadershipLost(f"Lease {self.namespace}/{self.name} is now held by {current.holder}")
        if self.observation.held_by_another(self.identity, self.timing.duration):
            return False
        if current.holder == self.identity:
            record = dataclasses.replace(current, duration_seconds=duration, renew_time=now)
        else:
            record = Record(self.identity, duration, now, now, current.transitions + 1)
        if not await self._replace(lease, record):
            return False
        self.observation.saw(record)
        return True

    async def _read(self) -> dict[str, Any] | None:
        # Without preloading, kubernetes-asyncio hands back error replies instead of raising (errors.checked).
        try:
            response = await errors.checked(
                await self._leases.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=self._timeout, _preload_content=False
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(await response.json())

    async def _create(self, record: Record) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.to_spec(),
        }
        try:
            await self._leases.create_namespaced_lease(self.namespace, body, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 409:
                return False  # another instance created it first
            raise
        return True

    async def _replace(self, lease: dict[str, Any], record: Record) -> bool:
        """Write ``record`` only if the Lease is unchanged since it was read (resourceVersion)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": record.to_spec(),
        }
        try:
            await self._leases.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status in (404, 409):
                return False  # changed or deleted meanwhile: decide again on the next round
            raise
        return True

    def _jittered(self) -> float:
        return self.timing.retry_period * random.uniform(1.0, JITTER)


def _brief(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
