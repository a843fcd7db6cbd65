"""Repeated trials reduced to the figures the benchmark reports: median and spread.

The machine is shared and noisy, so a headline figure is never one trial: it is the
median of several, with the lowest and highest beside it so the reader sees the noise.
A ratio against the floor is taken per pair of adjacent trials (floor, then operator,
measured seconds apart), then reduced, so a slow minute weighs on both sides of a pair.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """Median, min and max of the values that were measured; all ``None`` if none were."""
    measured = [value for value in values if value is not None]
    if not measured:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(measured), 3),
        "min": round(min(measured), 3),
        "max": round(max(measured), 3),
    }


def pick(result: Mapping[str, Any], path: str) -> float | None:
    """A figure out of one trial's nested result by a dotted path (``create_to_running.p50_ms``)."""
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def summarise(trials: Sequence[Mapping[str, Any]], paths: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """The spread of each figure across trials, keyed by its dotted path."""
    return {path: spread(pick(trial, path) for trial in trials) for path in paths}


def paired_ratios(
    numerators: Sequence[Mapping[str, Any]], denominators: Sequence[Mapping[str, Any]], path: str
) -> list[float]:
    """Trial i of one side over trial i of the other, for each pair where both were measured."""
    ratios = []
    for top, bottom in zip(numerators, denominators, strict=True):
        a, b = pick(top, path), pick(bottom, path)
        if a is not None and b:
            ratios.append(a / b)
    return ratios
