"""Regular expressions written by users, matched in linear time by RE2.

A JSON Schema ``pattern`` comes from whoever wrote the run, and the text it is matched
against comes from a model. A backtracking engine such as Python's ``re`` can spend
minutes on a pattern like ``^(a+)+$`` while it holds the GIL, which freezes every other
run, the health endpoints and signal handling with it. RE2 matches in time linear in the
text, releases the GIL while it matches, and refuses the constructs it cannot match that
way (backreferences, lookaround). Each compiled pattern's memory is capped as well.
"""

from __future__ import annotations

import re2

MAX_MEMORY_BYTES = 1024 * 1024
"""Memory one compiled pattern may use; a pattern that needs more is refused as too large."""


class PatternError(ValueError):
    """The pattern cannot be used; the message says why and is safe to show to the user."""


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEMORY_BYTES
    options.never_capture = True  # only "does it match" is asked: no submatch bookkeeping
    options.log_errors = False  # a refused pattern is reported to its author, not to stderr
    return options


class Pattern:
    """One compiled pattern: ``search`` answers whether it matches anywhere in a text."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._compiled = re2.compile(_utf8(source), _options())
        except re2.error as error:
            raise PatternError(_describe(source, error)) from None

    def search(self, text: str) -> bool:
        return self._compiled.search(_utf8(text)) is not None


def _utf8(text: str) -> bytes:
    # JSON can carry lone surrogates, which strict UTF-8 refuses to encode: they pass
    # through as bytes RE2 treats as invalid UTF-8 instead of raising here.
    return text.encode("utf-8", "surrogatepass")


def _describe(source: str, error: re2.error) -> str:
    detail = error.args[0] if error.args else "invalid pattern"
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    if "too large" in str(detail):
        detail = f"{detail} (a pattern may use at most {MAX_MEMORY_BYTES // 1024} KiB once compiled)"
    return f"pattern {source!r} cannot be used: {detail} (patterns use RE2 syntax: no backreferences or lookaround)"
