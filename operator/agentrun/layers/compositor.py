"""Enter a composition's layers in order, run the agent, and leave a session snapshot.

Every Secret value the layers read passes through here, so this is also where a run's
credentials are masked in everything the run hands back: failure messages, progress
events, output and snapshot (see :mod:`agentrun.layers.redaction`). Progress events are
masked first and then cut to their bounds (see :mod:`agentrun.layers.events`).
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from agentrun.api import models
from agentrun.layers import agent, base, errors, events, redaction, registry, session


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
    """Execute ``spec`` in-process; raises a classified ``RunFailure`` on any request or model problem.

    No Secret value read during the run appears in what it returns or raises.
    """
    redactor = redaction.Redactor()
    context = dataclasses.replace(context, read_secret=redactor.reading(context.read_secret), mask_secret=redactor.add)

    def redacted_progress(event_type: str, data: dict[str, Any]) -> None:
        progress(event_type, events.bounded(redactor.redact_json(data)))

    try:
        return await _compose(spec, layer_registry, context, redacted_progress, redactor)
    except errors.RunFailure as failure:
        if not redactor.leaks(failure.message):
            raise
        raise failure.with_message(redactor.redact(failure.message)) from None
    except Exception as error:
        # Whatever escapes is logged with its traceback by the caller: mask it first.
        text = "".join(traceback.format_exception(error))
        if not redactor.leaks(text):
            raise
        raise redaction.RedactedError(redactor.redact(text)) from None


async def _compose(
    spec: models.AgentRunSpec,
    layer_registry: registry.LayerRegistry,
    context: base.RunContext,
    progress: agent.Progress,
    redactor: redaction.Redactor,
) -> CompositionResult:
    if spec.composition is None:
        raise errors.InvalidRequest("the run has no composition: set spec.composition or spec.agentRef")
    layers = [layer_registry.create(item.name, item.type, item.config) for item in spec.composition.layers]
    states = session.resume([layer.name for layer in layers], spec.session_snapshot)
    plan = base.AgentPlan()
    for layer in layers:
        await layer.enter(plan, context, states[layer.name])
    result = await agent.run(plan, progress, spec.limits)
    outcome = base.AgentOutcome(output=result.output, messages=result.messages)
    snapshot = session.leave(
        {layer.name: redactor.redact_json(layer.leave(outcome)) for layer in layers},
        close=spec.session_exit is models.SessionExit.CLOSE,
    )
    return CompositionResult(output=redactor.redact_json(result.output), usage=result.usage, session_snapshot=snapshot)
