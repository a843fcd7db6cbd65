"""Streamed responses read line by line, whatever the chunking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentrun.kube import streams


class Stream:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param((b"a\nb\n",), [b"a", b"b"], id="whole-lines"),
        pytest.param((b'{"x": ', b"1}\n{", b'"y": 2}'), [b'{"x": 1}', b'{"y": 2}'], id="split-and-unterminated"),
        pytest.param((b"x" * 300_000, b"x" * 300_000 + b"\n"), [b"x" * 600_000], id="longer-than-aiohttp-allows"),
        pytest.param((b"a\n\nb\n",), [b"a", b"", b"b"], id="empty-line-kept"),
        pytest.param((b"",), [], id="nothing"),
    ],
)
async def test_lines(chunks: tuple[bytes, ...], expected: list[bytes]) -> None:
    assert [line async for line in streams.lines(Stream(*chunks))] == expected
