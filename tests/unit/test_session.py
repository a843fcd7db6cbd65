"""Session snapshots: which layer states a run may enter, and what it leaves behind."""

from __future__ import annotations

import pytest

from agentrun.api import models
from agentrun.layers import errors, session

LAYERS = ["llm", "prompt"]


def snapshot(*layers: tuple[str, str, dict[str, object]]) -> models.SessionSnapshot:
    return models.SessionSnapshot(
        layers=[
            models.LayerSnapshot(name=name, lifecycle_state=models.LifecycleState(state), runtime_state=runtime)
            for name, state, runtime in layers
        ]
    )


def test_no_snapshot_starts_every_layer_fresh() -> None:
    assert session.resume(LAYERS, None) == {"llm": None, "prompt": None}


def test_suspended_layers_resume_their_runtime_state_and_new_layers_start_fresh() -> None:
    history = {"messages": [{"kind": "request"}]}
    states = session.resume(LAYERS, snapshot(("llm", "suspended", history), ("prompt", "new", {"ignored": True})))
    assert states == {"llm": history, "prompt": None}


def test_resumed_state_is_a_copy() -> None:
    saved = snapshot(("llm", "suspended", {"k": "v"}), ("prompt", "suspended", {}))
    states = session.resume(LAYERS, saved)
    resumed = states["llm"]
    assert resumed is not None
    resumed["k"] = "changed"
    assert saved.layers[0].runtime_state == {"k": "v"}


def test_closed_layer_is_rejected_with_the_exact_message() -> None:
    with pytest.raises(errors.InvalidRequest) as rejected:
        session.resume(LAYERS, snapshot(("llm", "suspended", {}), ("prompt", "closed", {})))
    assert rejected.value.message == "Layer 'prompt' is closed; CLOSED snapshots cannot be entered."
    assert rejected.value.reason is models.Reason.INVALID_REQUEST


def test_active_layer_is_rejected() -> None:
    with pytest.raises(errors.InvalidRequest) as rejected:
        session.resume(LAYERS, snapshot(("llm", "active", {}), ("prompt", "suspended", {})))
    assert rejected.value.message.startswith("Layer 'llm' is active; ACTIVE snapshots cannot be entered")


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["prompt", "llm"], id="order-differs"),
        pytest.param(["llm"], id="layer-missing"),
        pytest.param(["llm", "prompt", "output"], id="extra-layer"),
        pytest.param(["llm", "system"], id="name-differs"),
    ],
)
def test_snapshot_must_match_the_composition_layers_in_order(names: list[str]) -> None:
    saved = snapshot(*[(name, "suspended", {}) for name in names])
    with pytest.raises(errors.InvalidRequest) as rejected:
        session.resume(LAYERS, saved)
    assert str(names) in rejected.value.message
    assert str(LAYERS) in rejected.value.message


@pytest.mark.parametrize(
    ("close", "expected"),
    [
        pytest.param(False, models.LifecycleState.SUSPENDED, id="suspend-by-default"),
        pytest.param(True, models.LifecycleState.CLOSED, id="close"),
    ],
)
def test_leave_sets_every_layer_to_one_state_in_order(close: bool, expected: models.LifecycleState) -> None:
    left = session.leave({"llm": {"messages": []}, "prompt": {}}, close=close)
    assert left.schema_version == 1
    assert [(layer.name, layer.lifecycle_state, layer.runtime_state) for layer in left.layers] == [
        ("llm", expected, {"messages": []}),
        ("prompt", expected, {}),
    ]


def test_suspended_snapshot_round_trips_through_the_wire() -> None:
    left = session.leave({"llm": {"messages": [{"kind": "response"}]}, "prompt": {}}, close=False)
    again = models.SessionSnapshot.model_validate(left.to_wire())
    assert session.resume(LAYERS, again) == {"llm": {"messages": [{"kind": "response"}]}, "prompt": {}}


def test_closed_snapshot_cannot_be_resumed() -> None:
    left = session.leave({"llm": {}, "prompt": {}}, close=True)
    with pytest.raises(errors.InvalidRequest, match="Layer 'llm' is closed"):
        session.resume(LAYERS, left)
