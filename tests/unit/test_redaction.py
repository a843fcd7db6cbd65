"""Masking credentials: the run's own Secret values, and credential-shaped log text."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agentrun.layers import redaction

KEY = 'sk-proj-Zx81\\q"u0te'


def test_every_form_of_a_read_value_is_masked() -> None:
    redactor = redaction.Redactor()
    redactor.add(KEY)
    escaped = KEY.replace("\\", "\\\\").replace('"', '\\"')
    encoded = base64.b64encode(KEY.encode()).decode()
    text = f"raw {KEY} json {escaped} base64 {encoded} end"
    assert redactor.leaks(text)
    assert redactor.redact(text) == "raw [redacted] json [redacted] base64 [redacted] end"
    assert not redactor.leaks(redactor.redact(text))


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        pytest.param("", False, id="empty"),
        pytest.param("abc", False, id="shorter-than-the-minimum"),
        pytest.param("abcd", True, id="at-the-minimum"),
    ],
)
def test_values_too_short_to_be_secret_are_not_masked(value: str, masked: bool) -> None:
    redactor = redaction.Redactor()
    redactor.add(value)
    assert (redactor.redact(f"x{value}x") == "x[redacted]x") is masked


def test_json_values_are_masked_in_keys_and_strings_and_otherwise_kept() -> None:
    redactor = redaction.Redactor()
    redactor.add("hunter22")
    value: Any = {"hunter22": ["say hunter22", 3, None, True], "n": 1.5}
    assert redactor.redact_json(value) == {"[redacted]": ["say [redacted]", 3, None, True], "n": 1.5}


async def test_the_reader_remembers_what_it_returns() -> None:
    redactor = redaction.Redactor()

    async def read(name: str, key: str) -> str:
        return f"{name}/{key}-value"

    assert await redactor.reading(read)("creds", "token") == "creds/token-value"
    assert redactor.redact("got creds/token-value") == "got [redacted]"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "Authorization: Bearer sk-abcdefghijklmnopqrstuvwxyz",
            "Authorization: [redacted]",
            id="header-line",
        ),
        pytest.param(
            "headers={'authorization': 'Bearer abc.def-ghi', 'accept': 'json'}",
            "headers={'authorization': '[redacted]', 'accept': 'json'}",
            id="header-mapping",
        ),
        pytest.param(
            "send_request_headers.started headers=[(b'authorization', b'Bearer tok_123')]",
            "send_request_headers.started headers=[(b'authorization', b'Bearer [redacted]')]",
            id="header-tuples",
        ),
        pytest.param("api_key='abcdefgh' model=x", "api_key='[redacted]' model=x", id="api-key-setting"),
        pytest.param("X-Api-Key=abcdefgh", "X-Api-Key=[redacted]", id="x-api-key"),
        pytest.param(
            "the key sk-1234567890abcdef1234 was rejected", "the key sk-[redacted] was rejected", id="openai-key"
        ),
        pytest.param("run default/ok succeeded in 0.2s", "run default/ok succeeded in 0.2s", id="ordinary-text"),
        pytest.param("skip-the-line; task-0001", "skip-the-line; task-0001", id="lookalike-words"),
    ],
)
def test_credential_shaped_text_is_masked(line: str, expected: str) -> None:
    assert redaction.redact_credentials(line) == expected
