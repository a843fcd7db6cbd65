"""Keep credentials out of what a run shows: its status, Kubernetes Events and logs.

The compositor reads every Secret value a run uses on the layers' behalf, so it knows
them all: everything that leaves a run (failure messages, progress events, output, the
session snapshot) passes through a :class:`Redactor` holding them. Providers are not
trusted to keep a key out of what they answer: some echo it back in their error text.

Log lines from libraries are outside any run; :func:`redact_credentials` masks what
looks like a credential in them (bearer tokens, authorization headers, API keys).
"""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the log filter imports this module: it stays free of the agent stack
    from agentrun.layers import base

REDACTED = "[redacted]"
MIN_REDACTED_LENGTH = 4
"""Shorter values are not masked: they would mangle every message and protect nothing."""


class RedactedError(Exception):
    """An unexpected error whose text held a credential: its message is that text, masked."""


class Redactor:
    """Masks the Secret values read during one run wherever they appear."""

    def __init__(self) -> None:
        self._forms: list[str] = []

    def add(self, value: str) -> None:
        """Mask ``value`` from now on, as written, JSON-escaped and base64-encoded."""
        if len(value) < MIN_REDACTED_LENGTH:
            return
        forms = {value, json.dumps(value)[1:-1], base64.b64encode(value.encode()).decode()}
        self._forms = sorted(set(self._forms) | forms, key=len, reverse=True)

    def reading(self, read: base.SecretReader) -> base.SecretReader:
        """``read``, remembering every value it returns."""

        async def read_and_remember(name: str, key: str) -> str:
            value = await read(name, key)
            self.add(value)
            return value

        return read_and_remember

    def leaks(self, text: str) -> bool:
        return any(form in text for form in self._forms)

    def redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text

    def redact_json(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys included) redacted."""
        if not self._forms:
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_json(key): self.redact_json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact_json(item) for item in value]
        return value


# Our own fixed expressions over log text, each linear in the text.
_CREDENTIAL_PATTERNS = (
    # A header or setting by name, up to the end of its value: `Authorization: Bearer x`, `api_key='x'`.
    re.compile(
        r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]?token)"
        r"""(["']?\s*[:=]\s*["']?)[^\s"',}]+(?:[ \t]+[^\s"',}]+)?"""
    ),
    # A bearer or basic credential on its own: `(b'authorization', b'Bearer x')`.
    re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"),
    # OpenAI-style keys wherever they appear.
    re.compile(r"\b(sk)(-)[A-Za-z0-9_-]{16,}"),
)


def redact_credentials(text: str) -> str:
    """``text`` with what looks like a credential masked; the names before them are kept."""
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)
    return text
