"""The operator's logging: the HTTP stack stays quiet at any level, and credentials are masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest

from agentrun import cli

TOKEN = "sk-abcdefghijklmnopqrstuvwx"


@pytest.fixture
def operator_log(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The root logger as ``agentrun operator`` sets it up, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    names = [*cli.QUIET_LOGGERS, "kopf.objects", "asyncio"]
    saved_levels = {name: logging.getLogger(name).level for name in names}
    saved = (
        root.level,
        root.handlers[:],
        logging.getLogger("asyncio").handlers[:],
        logging.getLogger("asyncio").propagate,
    )
    filters = {handler: handler.filters[:] for handler in saved[1]}
    log_format = getattr(request, "param", kopf.LogFormat.PLAIN)
    kopf.configure(log_format=log_format, log_refkey="object")
    stream = io.StringIO()
    kopf_handler = root.handlers[-1]  # kopf.configure appends its own
    assert isinstance(kopf_handler, logging.StreamHandler)
    kopf_handler.setStream(stream)
    yield stream
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    logging.getLogger("asyncio").handlers[:] = saved[2]
    logging.getLogger("asyncio").propagate = saved[3]
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    for handler, kept in filters.items():
        handler.filters[:] = kept  # pytest's own handlers carry no filter of the operator's afterwards


@pytest.mark.parametrize(
    "logger_name",
    [
        pytest.param("kubernetes_asyncio.client.rest", id="kubernetes-response-bodies"),
        pytest.param("httpcore2.http11", id="httpcore-headers"),
        pytest.param("httpx2", id="httpx-requests"),
        pytest.param("openai._base_client", id="openai-sdk"),
        pytest.param("hpack.hpack", id="hpack-header-encoding"),
    ],
)
def test_http_libraries_stay_quiet_even_at_debug(operator_log: io.StringIO, logger_name: str) -> None:
    cli.configure_logging("DEBUG")
    logging.getLogger(logger_name).debug("response body: {'data': {'api-key': 'c2stc2VjcmV0'}}")
    logging.getLogger(logger_name).info("HTTP Request: POST https://llm.internal/v1/chat/completions")
    logging.getLogger("agentrun.runtime").debug("the operator's own debug line")
    written = operator_log.getvalue()
    assert "c2stc2VjcmV0" not in written
    assert "HTTP Request" not in written
    assert "the operator's own debug line" in written


def test_credentials_are_masked_in_messages_and_arguments(operator_log: io.StringIO) -> None:
    cli.configure_logging("INFO")
    logger = logging.getLogger("agentrun.test")
    logger.info("sending headers %s", {"Authorization": f"Bearer {TOKEN}"})
    logger.warning(f"provider said: Incorrect API key provided: {TOKEN}")
    written = operator_log.getvalue()
    assert TOKEN not in written
    assert "'Authorization': '[redacted]'" in written
    assert "Incorrect API key provided: sk-[redacted]" in written


@pytest.mark.parametrize(
    "operator_log",
    [pytest.param(kopf.LogFormat.PLAIN, id="text"), pytest.param(kopf.LogFormat.JSON, id="json")],
    indirect=True,
)
def test_credentials_are_masked_in_tracebacks(operator_log: io.StringIO) -> None:
    cli.configure_logging("INFO")
    try:
        raise RuntimeError(f"request failed: Authorization: Bearer {TOKEN}")
    except RuntimeError:
        logging.getLogger("agentrun.test").exception("AgentRun ns/run failed with an unexpected error")
    written = operator_log.getvalue()
    assert TOKEN not in written
    assert "RuntimeError: request failed: Authorization: [redacted]" in written
    if written.startswith("{"):
        assert "Traceback" in json.loads(written.splitlines()[0])["exc_info"]


def test_configuring_twice_adds_one_filter(operator_log: io.StringIO) -> None:
    cli.configure_logging("INFO")
    cli.configure_logging("INFO")
    for handler in logging.getLogger().handlers:
        assert sum(isinstance(f, cli.CredentialFilter) for f in handler.filters) <= 1
