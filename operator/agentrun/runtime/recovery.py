"""Runs whose owner is gone: found when this instance starts leading and by the resync, failed, let go."""

from __future__ import annotations

import dataclasses
import functools
import logging

from agentrun.api import models
from agentrun.runtime import changes, ending, ports, services, threads, transitions

logger = logging.getLogger(__name__)


def orphan_ending(run: ports.RunObject) -> transitions.Ending:
    runner = run.status.runner
    owner = runner.instance if runner else "unknown"
    message = (
        f"the operator instance {owner} that ran this run stopped (it no longer holds the operator's"
        " leader Lease); the run did not finish"
    )
    return transitions.failure(models.Reason.OPERATOR_RESTARTED, message)


@dataclasses.dataclass(frozen=True)
class Orphaned:
    """An orphan this instance failed and let go."""

    run: ports.RunObject


async def fail_orphan(svc: services.Services, run: ports.RunObject) -> Orphaned | None:
    """Record ``OperatorRestarted`` unless the owner shows signs of life meanwhile."""
    orphan = orphan_ending(run)
    at = ending.next_attempt_at(svc, run, orphan)
    change = functools.partial(
        changes.fail_orphan, seen=run.status, ending=orphan, now=svc.clock(), ring_size=svc.ring_size, retry_at=at
    )
    written = await svc.writer.write_status(run, change, what="fail the orphaned run")
    if written is None or not written.changed:
        return None
    if at is not None:
        ending.announce_retry(svc, written.run, orphan)
        return Orphaned(written.run)
    logger.warning("AgentRun %s: %s", run.ref, orphan.message)
    ending.record_finished(svc.metrics, written.run.status)
    await threads.release(svc, written.run, orphan)
    svc.post_kube_event(written.run, ports.KubeEventType.WARNING, "OperatorRestarted", orphan.message)
    return Orphaned(await ending.release(svc, written.run))
