"""The layer-type registry, fed by the ``agentrun.layers`` entry-point group."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from agentrun.layers import base, errors

ENTRY_POINT_GROUP = "agentrun.layers"

logger = logging.getLogger(__name__)


class LayerRegistry:
    """Maps layer type ids to layer classes."""

    def __init__(self, layer_types: Iterable[type[base.Layer]] = ()) -> None:
        self._types: dict[str, type[base.Layer]] = {}
        for layer_type in layer_types:
            self.register(layer_type)

    @classmethod
    def from_entry_points(cls) -> LayerRegistry:
        """Every layer type installed in this environment, built-in ones included."""
        registry = cls()
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            layer_type = entry_point.load()
            if not (isinstance(layer_type, type) and issubclass(layer_type, base.Layer)):
                raise TypeError(f"entry point {entry_point.name!r} of {ENTRY_POINT_GROUP} is not a Layer subclass")
            if layer_type.type_id != entry_point.name:
                raise TypeError(
                    f"entry point {entry_point.name!r} loads layer type {layer_type.type_id!r}: names must match"
                )
            registry.register(layer_type)
        logger.debug("layer types registered: %s", ", ".join(sorted(registry.type_ids)))
        return registry

    def register(self, layer_type: type[base.Layer]) -> None:
        existing = self._types.get(layer_type.type_id)
        if existing is not None and existing is not layer_type:
            raise ValueError(f"layer type id {layer_type.type_id!r} is registered twice")
        self._types[layer_type.type_id] = layer_type

    @property
    def type_ids(self) -> Mapping[str, type[base.Layer]]:
        return dict(self._types)

    def create(self, name: str, type_id: str, config: dict[str, Any]) -> base.Layer:
        """A layer instance with its config validated, or InvalidRequest."""
        layer_type = self._types.get(type_id)
        if layer_type is None:
            raise errors.InvalidRequest(f"Layer type id '{type_id}' is not registered.")
        return layer_type(name, config)
