"""Session snapshot rules: which layer states a run may enter, and what it leaves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentrun.api import models
from agentrun.layers import errors

State = dict[str, Any]


def resume(layer_names: Sequence[str], snapshot: models.SessionSnapshot | None) -> dict[str, State | None]:
    """The runtime state each layer resumes from (``None`` for a fresh layer).

    ``suspended`` layers resume, ``new`` layers start fresh, ``closed`` and ``active``
    layers are rejected: a closed session is over, and an active one is still owned
    by another run.
    """
    if snapshot is None:
        return dict.fromkeys(layer_names)
    snapshot_names = [layer.name for layer in snapshot.layers]
    if snapshot_names != list(layer_names):
        raise errors.InvalidRequest(
            f"Session snapshot layers {snapshot_names} do not match the composition layers {list(layer_names)}."
        )
    states: dict[str, State | None] = {}
    for layer in snapshot.layers:
        match layer.lifecycle_state:
            case models.LifecycleState.CLOSED:
                raise errors.InvalidRequest(f"Layer '{layer.name}' is closed; CLOSED snapshots cannot be entered.")
            case models.LifecycleState.ACTIVE:
                raise errors.InvalidRequest(
                    f"Layer '{layer.name}' is active; ACTIVE snapshots cannot be entered"
                    " until the run that holds it exits."
                )
            case models.LifecycleState.SUSPENDED:
                states[layer.name] = dict(layer.runtime_state)
            case models.LifecycleState.NEW:
                states[layer.name] = None
    return states


def leave(states: Mapping[str, State], *, close: bool) -> models.SessionSnapshot:
    """The snapshot a run leaves behind: every layer suspended, or closed."""
    lifecycle = models.LifecycleState.CLOSED if close else models.LifecycleState.SUSPENDED
    return models.SessionSnapshot(
        schema_version=1,
        layers=[
            models.LayerSnapshot(name=name, lifecycle_state=lifecycle, runtime_state=state)
            for name, state in states.items()
        ],
    )


def with_user_turn(
    snapshot: models.SessionSnapshot | None, layer_names: Sequence[str], prompts: Sequence[str]
) -> models.SessionSnapshot | None:
    """``snapshot`` with ``prompts`` added as an unanswered user turn of the model layer's history.

    This is what an interrupted run leaves in its thread: what was asked, without the
    answer it never finished. Without a model layer or prompts, the snapshot is unchanged.
    """
    from agentrun.layers.builtin import model  # the model layer owns the history format

    texts = [prompt for prompt in prompts if prompt.strip()]
    if models.MODEL_LAYER not in layer_names or not texts:
        return snapshot
    states = {layer.name: layer for layer in snapshot.layers} if snapshot else {}
    layers: list[models.LayerSnapshot] = []
    for name in layer_names:
        previous = states.get(name)
        state = dict(previous.runtime_state) if previous else {}
        if name == models.MODEL_LAYER:
            state = model.with_user_turn(state, texts)
        lifecycle = previous.lifecycle_state if previous else models.LifecycleState.SUSPENDED
        layers.append(models.LayerSnapshot(name=name, lifecycle_state=lifecycle, runtime_state=state))
    return models.SessionSnapshot(schema_version=1, layers=layers)
