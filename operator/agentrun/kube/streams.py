"""Reading a streamed API-server response (a watch, a followed log) line by line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def lines(stream: Any) -> AsyncIterator[bytes]:
    """Every line of ``stream`` (an aiohttp ``StreamReader``), without its newline, of any length.

    Chunks, not ``readline``: a watch event or a runner's result can be far longer than
    aiohttp's line limit. A last line without a newline is yielded if it is not empty.
    """
    partial: list[bytes] = []
    async for chunk in stream.iter_any():
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            yield b"".join([*partial, piece])
            partial.clear()
        partial.append(rest)
    tail = b"".join(partial)
    if tail:
        yield tail
