"""Background work that never dies silently.

Chores (an Event to post, a status to record) are spawned and forgotten, but an
unexpected exception is logged with what the chore was doing. Loops (recovery,
resync) are kept running: an unexpected exception is logged and the loop restarts
after a backoff; a loop marked critical ends the process instead, so that the
liveness probe and the Deployment start a fresh instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = (1.0, 30.0)
"""First and longest wait before a failed loop runs again."""
CLOSE_WAIT_SECONDS = 1.0


class Supervisor:
    """Owns every background task of the runtime."""

    def __init__(self, on_fatal: Callable[[str], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_fatal = on_fatal or _exit_process
        self.failures = 0
        """Unexpected exceptions seen so far (tests and metrics read it)."""

    def spawn(self, coroutine: Coroutine[Any, Any, object], *, what: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background; an unexpected exception is logged with ``what``."""
        task = asyncio.create_task(self._chore(coroutine, what), name=what)
        self._track(task)
        return task

    def keep_running(
        self, loop: Callable[[], Awaitable[None]], *, what: str, critical: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``loop()`` until cancelled; restart it after an unexpected exception (or end the process)."""
        task = asyncio.create_task(self._forever(loop, what, critical), name=what)
        self._track(task)
        return task

    async def close(self) -> None:
        """Cancel every background task and wait briefly for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_SECONDS)

    async def settle(self) -> None:
        """Wait until no chore is left (tests use it before asserting)."""
        while chores := [task for task in self._tasks if not task.get_name().startswith("loop:")]:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(chores)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _chore(self, coroutine: Coroutine[Any, Any, object], what: str) -> object:
        try:
            return await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:  # a chore's bug must be seen in the log, never swallowed
            self.failures += 1
            logger.exception("background task failed unexpectedly: %s", what)
            return None

    async def _forever(self, loop: Callable[[], Awaitable[None]], what: str, critical: bool) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.set_name(f"loop: {what}")
        delay, longest = RESTART_DELAY_SECONDS
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # supervised: logged with context, then restarted or fatal
                self.failures += 1
                if critical:
                    logger.exception("%s failed unexpectedly; the operator exits so that it is restarted", what)
                    self._on_fatal(what)
                    return
                logger.exception("%s failed unexpectedly; restarting it in %.0fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)


def _exit_process(what: str) -> None:
    # A graceful stop: the operator's SIGTERM handling drains and releases the runs, the
    # process exits, and the Deployment starts a fresh instance.
    os.kill(os.getpid(), signal.SIGTERM)


LEADERSHIP_LOST_EXIT_CODE = 3


def exit_now(reason: str) -> NoReturn:
    """End the process at once: no drain, no cleanup, no further API writes.

    For a leader that lost its Lease: another instance may already lead, and any write
    from here on could contradict it. Logs are flushed first; the Deployment restarts
    the process as a standby.
    """
    logger.critical("%s", reason)
    logging.shutdown()
    os._exit(LEADERSHIP_LOST_EXIT_CODE)
