"""The textbook kopf operator, as a benchmark baseline.

An ``on.create`` handler runs the agent inline and writes the result through
kopf's patch; kopf keeps its own progress and last-handled state in annotations.
Same layers, same echo model as agentrun: only the operator design differs.
Started by bench/run.py with ``kopf run --standalone``.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from agentrun.api import models
from agentrun.layers import base, compositor, registry

LAYERS = registry.LayerRegistry.from_entry_points()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _no_secrets(name: str, key: str) -> str:
    raise RuntimeError("the benchmark workload reads no Secrets")


@kopf.on.create(models.GROUP, models.VERSION, models.PLURAL)
async def run_agent(spec: kopf.Spec, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
    started = _now()
    result = await compositor.run(
        models.AgentRunSpec.model_validate(dict(spec)),
        LAYERS,
        base.RunContext(namespace=namespace or "", read_secret=_no_secrets),
        lambda event_type, data: None,
    )
    patch.status.update(
        {
            "phase": "Succeeded",
            "reason": "Succeeded",
            "startTime": started,
            "completionTime": _now(),
            "output": result.output,
            "usage": result.usage.to_wire(),
            "sessionSnapshot": result.session_snapshot.to_wire(),
        }
    )
