"""Background work is supervised: logged, restarted, or fatal; never silent."""

from __future__ import annotations

import asyncio
import logging

import fakes
import pytest

from agentrun.runtime import supervision


@pytest.fixture(autouse=True)
def _fast_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "RESTART_DELAY_SECONDS", (0.01, 0.05))


async def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = supervision.Supervisor(on_fatal=lambda what: pytest.fail(f"not fatal: {what}"))
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError(f"boom {calls}")
        await asyncio.Event().wait()  # the third run keeps going

    supervisor.keep_running(flaky, what="the sweep")
    await fakes.eventually(lambda: calls == 3, what="two restarts")
    await supervisor.close()

    assert supervisor.failures == 2
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert messages == ["the sweep failed unexpectedly; restarting it in 0s"] * 2
    assert "RuntimeError: boom 1" in caplog.text  # with its traceback


async def test_a_failing_critical_loop_ends_the_process() -> None:
    fatal: list[str] = []
    supervisor = supervision.Supervisor(on_fatal=fatal.append)

    async def broken() -> None:
        raise RuntimeError("cannot recover")

    task = supervisor.keep_running(broken, what="startup recovery", critical=True)
    await asyncio.wait_for(task, timeout=5)

    assert fatal == ["startup recovery"]


async def test_a_failing_chore_is_logged_with_what_it_was_doing(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = supervision.Supervisor()

    async def chore() -> None:
        raise ValueError("bad")

    supervisor.spawn(chore(), what="post Event Started for AgentRun ns/a")
    await supervisor.settle()

    assert supervisor.failures == 1
    assert "background task failed unexpectedly: post Event Started for AgentRun ns/a" in caplog.text


async def test_a_chore_returns_its_result() -> None:
    supervisor = supervision.Supervisor()

    async def answer() -> int:
        return 42

    assert await supervisor.spawn(answer(), what="answer") == 42
