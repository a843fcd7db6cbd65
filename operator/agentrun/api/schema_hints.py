"""Kubernetes structural-schema hints attached to model fields.

Each helper returns a ``json_schema_extra`` mapping that the CRD generator
(:mod:`agentrun.api.crd`) carries into the OpenAPI schema. Keeping them here means
the models say *what* a field is, and this module says how Kubernetes spells it.
"""

from __future__ import annotations

from typing import Any

PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
VALIDATIONS = "x-kubernetes-validations"


def open_object(forbidden_keys: dict[str, str] | None = None) -> dict[str, Any]:
    """An object whose keys the API server keeps as they are.

    ``forbidden_keys`` maps a key to the admission message shown when it is present.
    CEL cannot see undeclared keys, so each forbidden key is declared as a property.
    """
    hint: dict[str, Any] = {"type": "object", PRESERVE_UNKNOWN: True}
    if forbidden_keys:
        hint["properties"] = {key: {"type": "string"} for key in forbidden_keys}
        hint[VALIDATIONS] = [
            {"rule": f"!has(self.{key})", "message": message} for key, message in forbidden_keys.items()
        ]
    return hint


def any_value() -> dict[str, Any]:
    """Any JSON value: object, array, string, number or boolean."""
    return {PRESERVE_UNKNOWN: True}


def map_list(*keys: str) -> dict[str, Any]:
    """A list whose items are unique by ``keys``; the API server rejects duplicates."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}
