"""Conversations: runs that join an AgentThread take turns, and the thread keeps the history.

A run holds its thread while it is admitted (``status.activeRun``, claimed with a
compare-and-set on the thread), so one run at a time writes the conversation; the
thread's ``multitaskStrategy`` says what a run arriving meanwhile does. When a run
ends, the thread follows it only if it is the newest run to finish: an older run
that ends later (an orphan failed after a restart) never overwrites the thread.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import json
import logging
from collections.abc import Awaitable, Callable

from agentrun.api import models
from agentrun.layers import session
from agentrun.layers.builtin import prompt
from agentrun.runtime import ports, services, transitions, writer

logger = logging.getLogger(__name__)

THREAD_LABEL = f"{models.GROUP}/thread"


class Gate(enum.Enum):
    """What a run that joins a thread may do now."""

    CLAIMED = "claimed"
    """The run holds the thread: it may start."""
    WAIT = "wait"
    """Another run holds the thread: wait for it (and, with interrupt or rollback, stop it)."""
    REJECT = "reject"
    """Another run holds the thread and its strategy is reject: the run fails."""
    MISSING = "missing"
    """The thread does not exist: the run fails."""


@dataclasses.dataclass(frozen=True)
class Claim:
    gate: Gate
    thread: ports.ThreadObject | None = None
    active: str | None = None
    """The run that holds the thread, when it is not this one."""

    @property
    def interrupts(self) -> bool:
        """The waiting run stops the active one (strategies interrupt and rollback)."""
        return (
            self.gate is Gate.WAIT
            and self.thread is not None
            and self.thread.spec.multitask_strategy
            in (models.MultitaskStrategy.INTERRUPT, models.MultitaskStrategy.ROLLBACK)
        )


def missing_message(run: ports.RunObject) -> str:
    return f"AgentThread '{run.thread_name}' was not found in namespace '{run.ref.namespace}'"


def busy_message(thread: str, active: str) -> str:
    return f"AgentThread '{thread}' is busy with run '{active}' and its multitaskStrategy is reject"


def waiting_message(thread: str, active: str) -> str:
    return f"waiting for run '{active}' to finish in AgentThread '{thread}'"


# --- pure status changes -------------------------------------------------------------------------


def holding(status: models.AgentThreadStatus, run: ports.RunObject) -> bool:
    return status.active_run == run.ref.name and status.active_run_uid == run.ref.uid


def claimed(status: models.AgentThreadStatus, run: ports.RunObject) -> models.AgentThreadStatus:
    """The thread held by ``run``, which takes the next turn."""
    return status.model_copy(
        update={
            "phase": models.ThreadPhase.BUSY,
            "active_run": run.ref.name,
            "active_run_uid": run.ref.uid,
            "turns": status.turns + 1,
        }
    )


def turn_of(run: ports.RunObject, status: models.AgentThreadStatus) -> int | None:
    """The run's turn: recorded at its admission, or the current one while it holds the thread."""
    if run.status.thread_turn is not None:
        return run.status.thread_turn
    return status.turns if holding(status, run) else None


def newer(run: ports.RunObject, status: models.AgentThreadStatus) -> bool:
    """Whether ``run`` took its turn after the newest run that finished in the thread."""
    turn = turn_of(run, status)
    return turn is not None and turn > (status.last_turn or 0)


def released(
    status: models.AgentThreadStatus,
    run: ports.RunObject,
    *,
    history: models.SessionSnapshot | None,
    history_ref: models.ContentRef | None,
    failed: bool,
) -> models.AgentThreadStatus:
    """The thread after ``run`` finished, given the history it leaves (``None``: unchanged).

    Only the newest run to finish moves the thread's history and phase; one of an
    earlier turn only lets go of the thread if it still held it, and a run that never
    took a turn (refused, or cancelled while it waited) changes nothing.
    """
    update: dict[str, object] = {}
    if holding(status, run):
        update.update(active_run=None, active_run_uid=None)
    if newer(run, status):
        update.update(last_run=run.ref.name, last_turn=turn_of(run, status), run_count=status.run_count + 1)
        if history is not None or history_ref is not None:
            update.update(history=history, history_ref=history_ref)
        update["phase"] = models.ThreadPhase.ERROR if failed else models.ThreadPhase.IDLE
    if update.get("active_run", status.active_run) is not None:
        update["phase"] = models.ThreadPhase.BUSY
    elif status.phase is models.ThreadPhase.BUSY and "phase" not in update:
        update["phase"] = models.ThreadPhase.IDLE
    return status.model_copy(update=update)


def history_after(
    run: ports.RunObject, ending: transitions.Ending, thread: ports.ThreadObject
) -> models.SessionSnapshot | None:
    """The conversation the thread keeps after ``run`` ended, or ``None`` to keep the one it has.

    A run that succeeded leaves its whole session. A run interrupted by a newer one (the
    thread's strategy is interrupt) leaves its question without an answer; with rollback,
    or when it failed or was cancelled otherwise, its turn is not kept.
    """
    if ending.phase is models.Phase.SUCCEEDED:
        return ending.conversation
    interrupted = ending.reason is models.Reason.INTERRUPTED
    if not interrupted or thread.spec.multitask_strategy is not models.MultitaskStrategy.INTERRUPT:
        return None
    spec = run.effective_spec
    if spec is None or spec.composition is None:
        return None
    layers = spec.composition.layers
    asked = [text for layer in layers if layer.type == "plain.prompt" for text in prompt.user_prompts(layer.config)]
    return session.with_user_turn(thread.status.history, [layer.name for layer in layers], asked)


# --- talking to the thread -----------------------------------------------------------------------


def taken_turn(claim: Claim) -> int | None:
    """The turn a run that holds its thread takes (recorded in its status at admission)."""
    if claim.gate is not Gate.CLAIMED or claim.thread is None:
        return None
    return claim.thread.status.turns


async def claim(svc: services.Services, run: ports.RunObject, *, others_first: bool) -> Claim:
    """Take the thread for ``run``, or say why it cannot run now.

    ``others_first`` is true when runs of the same thread that were created earlier
    are waiting: then this one waits too, so that the queue is first come, first served.
    """
    name = run.thread_name
    assert name is not None
    namespace = run.ref.namespace
    backoff = writer.Backoff()
    while True:
        try:
            thread = await svc.api.get_thread(namespace, name)
        except ports.NotFound:
            return Claim(Gate.MISSING)
        status = thread.status
        if holding(status, run):
            return Claim(Gate.CLAIMED, thread)
        active = await _active_run(svc, thread)
        if active is not None:
            if thread.spec.multitask_strategy is models.MultitaskStrategy.REJECT:
                return Claim(Gate.REJECT, thread, active)
            return Claim(Gate.WAIT, thread, active)
        if others_first:
            return Claim(Gate.WAIT, thread, None)
        try:
            thread = await svc.api.write_thread_status(thread, claimed(status, run))
        except ports.Conflict:
            continue  # someone else moved first: look again
        except (ports.Unavailable, ports.Forbidden) as error:
            logger.warning("AgentRun %s: could not claim AgentThread %s, will retry: %s", run.ref, name, error)
            await backoff.sleep(None)
            continue
        return Claim(Gate.CLAIMED, thread)


async def release(svc: services.Services, run: ports.RunObject, ending: transitions.Ending) -> None:
    """Let go of the thread after ``run`` ended, and leave its turn in the history."""
    name = run.thread_name
    if name is None:
        return
    await _update(
        svc,
        run,
        functools.partial(_released_status, svc, run, ending),
        what=f"record the end of AgentRun {run.ref} in AgentThread {name}",
    )


async def _released_status(
    svc: services.Services, run: ports.RunObject, ending: transitions.Ending, thread: ports.ThreadObject
) -> models.AgentThreadStatus:
    history = history_after(run, ending, thread) if newer(run, thread.status) else None
    history_ref = None
    if history is not None:
        payload = json.dumps(history.to_wire(), separators=(",", ":"))
        if len(payload.encode()) > svc.settings.status_budget_bytes // 2:
            history_ref = await svc.api.store_thread_history(thread, payload)
            history = None
    failed = ending.phase is models.Phase.FAILED
    return released(thread.status, run, history=history, history_ref=history_ref, failed=failed)


async def _update(
    svc: services.Services,
    run: ports.RunObject,
    change: Callable[[ports.ThreadObject], Awaitable[models.AgentThreadStatus]],
    *,
    what: str,
) -> None:
    """Apply ``change`` to the thread's status with compare-and-set, retrying as the writer does."""
    name = run.thread_name
    assert name is not None
    backoff = writer.Backoff()
    while True:
        try:
            thread = await svc.api.get_thread(run.ref.namespace, name)
            status = await change(thread)
            if status != thread.status:
                await svc.api.write_thread_status(thread, status)
            return
        except ports.NotFound:
            return  # the thread is gone, and its history with it
        except ports.Conflict:
            continue
        except (ports.Unavailable, ports.Forbidden, ports.NotOwned) as error:
            logger.warning("could not %s, will retry: %s", what, error)
            if not await backoff.sleep(None):
                return


async def _active_run(svc: services.Services, thread: ports.ThreadObject) -> str | None:
    """The run that holds the thread, if it is still unfinished."""
    status = thread.status
    if status.active_run is None:
        return None
    try:
        holder = await svc.api.get(ports.RunRef(thread.namespace, status.active_run, status.active_run_uid or ""))
    except ports.NotFound:
        return None
    if status.active_run_uid and holder.ref.uid != status.active_run_uid:
        return None  # a namesake: the holder is gone
    return None if holder.status.phase.terminal else status.active_run


def created_order(run: ports.RunObject) -> tuple[datetime.datetime, str]:
    """The order in which a thread's waiting runs go: first created, first served."""
    return (run.created or datetime.datetime.max.replace(tzinfo=datetime.UTC), run.ref.name)
