"""Enter a composition's layers in order, run the agent, and leave a session snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any

from agentrun.api import models
from agentrun.layers import agent, base, errors, registry, session


@dataclasses.dataclass(frozen=True)
class CompositionResult:
    output: Any
    usage: models.Usage
    session_snapshot: models.SessionSnapshot


async def run(
    spec: models.AgentRunSpec,
    layer_registry: registry.LayerRegistry,
    context: base.RunContext,
    progress: agent.Progress,
) -> CompositionResult:
    """Execute ``spec`` in-process; raises a classified ``RunFailure`` on any request or model problem."""
    if spec.composition is None:
        raise errors.InvalidRequest("the run has no composition: set spec.composition or spec.agentRef")
    layers = [layer_registry.create(item.name, item.type, item.config) for item in spec.composition.layers]
    states = session.resume([layer.name for layer in layers], spec.session_snapshot)
    plan = base.AgentPlan()
    for layer in layers:
        await layer.enter(plan, context, states[layer.name])
    result = await agent.run(plan, progress)
    outcome = base.AgentOutcome(output=result.output, messages=result.messages)
    snapshot = session.leave(
        {layer.name: layer.leave(outcome) for layer in layers},
        close=spec.session_exit is models.SessionExit.CLOSE,
    )
    return CompositionResult(output=result.output, usage=result.usage, session_snapshot=snapshot)
