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
from agentrun.runtime import metrics, ports, reconciler, runner, services, supervision, writer

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
async def make_reconciler(
    run_store: fakes.FakeRunStore, scripted_runner: fakes.ScriptedRunner
) -> AsyncIterator[fakes.MakeReconciler]:
    """Build reconcilers wired to the fake store's watch, as kopf wires the real one.

    Every reconciler is closed afterwards, and the test must leave no task behind.
    """
    made: list[tuple[reconciler.Reconciler, fakes.Watcher]] = []

    def make(
        run_runner: runner.Runner | None = None, *, clock: services.Clock | None = None, **settings: Any
    ) -> reconciler.Reconciler:
        run_metrics = metrics.Metrics()
        svc = services.Services(
            api=run_store,
            writer=writer.Writer(run_store, run_metrics),
            runner=run_runner or scripted_runner,
            settings=fakes.settings(**settings),
            metrics=run_metrics,
            supervisor=supervision.Supervisor(on_fatal=_fatal_in_tests),
            **({"clock": clock} if clock is not None else {}),
        )
        core = reconciler.Reconciler(svc)
        core.start()

        def on_event(event_type: str, run: ports.RunObject) -> None:
            if event_type == "DELETED":
                core.forget(run.ref)
            else:
                core.observe(run)

        run_store.watch(on_event)
        made.append((core, on_event))
        return core

    yield make
    for core, on_event in made:
        run_store.unwatch(on_event)
        await core.close()
        assert core.svc.supervisor.failures == 0, "a background task failed unexpectedly (see the log)"
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert not leftover, f"tasks left behind: {leftover}"


def _fatal_in_tests(what: str) -> None:
    raise AssertionError(f"a critical loop failed: {what}")
