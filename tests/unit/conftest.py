"""Fixtures of the unit tier: in-memory fakes, no network, no API server."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import fakes
import pytest

from agentrun.layers import base, registry
from agentrun.runtime import runner, scheduler, store

UNIT_TIMEOUT_SECONDS = 30
"""A unit test that hangs fails in this time, not in the suite-wide five minutes."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_SECONDS))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read AGENTRUN_* and POD_NAME: the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("AGENTRUN_") or name == "POD_NAME":
            monkeypatch.delenv(name)


async def _no_secrets(name: str, key: str) -> str:
    raise AssertionError(f"read_secret({name!r}, {key!r}) must not be called")


@pytest.fixture
def run_context() -> base.RunContext:
    """A context whose Secret reader must not be called."""
    return base.RunContext(namespace=fakes.NAMESPACE, read_secret=_no_secrets)


@pytest.fixture(scope="session")
def layer_registry() -> registry.LayerRegistry:
    """Every installed layer type, as the operator loads them."""
    return registry.LayerRegistry.from_entry_points()


@pytest.fixture
def run_store() -> fakes.FakeRunStore:
    return fakes.FakeRunStore()


@pytest.fixture
def scripted_runner() -> fakes.ScriptedRunner:
    return fakes.ScriptedRunner()


@pytest.fixture
def task_runner(layer_registry: registry.LayerRegistry, run_store: fakes.FakeRunStore) -> runner.TaskRunner:
    return runner.TaskRunner(layer_registry, run_store)


@pytest.fixture
async def make_scheduler(
    run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> AsyncIterator[fakes.MakeScheduler]:
    """Build schedulers wired to the fake store's watch, as kopf wires the real one.

    Every scheduler is closed afterwards, and the test must leave no task behind.
    """
    made: list[tuple[scheduler.Scheduler, fakes.Watcher]] = []

    def make(
        run_runner: runner.Runner | None = None, *, clock: runner.Clock | None = None, **settings: Any
    ) -> scheduler.Scheduler:
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        sched = scheduler.Scheduler(
            run_store=run_store,
            run_runner=run_runner or scripted_runner,
            settings=fakes.settings(**settings),
            **kwargs,
        )

        def on_event(event_type: str, run: store.RunObject) -> None:
            if event_type == "DELETED":
                sched.forget(run.ref)
            else:
                sched.observe(run)

        run_store.watch(on_event)
        made.append((sched, on_event))
        return sched

    yield make
    for sched, on_event in made:
        run_store.unwatch(on_event)
        await sched.close()
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert not leftover, f"tasks left behind: {leftover}"
