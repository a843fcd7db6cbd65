"""``agentrun runner``: the entry point of a runner Pod.

It runs one attempt with the same layers and agent loop as task mode. Its input is the
run's resolved spec, mounted read-only from a Secret the run owns; model credentials are
files of a projected volume, one per referenced Secret key. It needs no API access and
makes none. It prints progress events and one result on stdout (see
:mod:`agentrun.pods.protocol`) and a compact summary as its termination message. On
SIGTERM it stops the agent, prints a ``cancelled`` result and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import pathlib
import signal
import sys
from typing import Any, TextIO

import pydantic

from agentrun.api import models
from agentrun.layers import base, compositor, errors, registry
from agentrun.pods import protocol

INPUT_DIR = pathlib.Path("/var/run/agentrun/input")
INPUT_KEY = "run.json"
SECRETS_DIR = pathlib.Path("/var/run/agentrun/secrets")
TERMINATION_LOG = pathlib.Path("/dev/termination-log")
TOKEN_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")

logger = logging.getLogger(__name__)


def input_document(namespace: str, spec: models.AgentRunSpec) -> str:
    """What the operator puts in the input Secret: the namespace and the resolved spec."""
    return json.dumps({"namespace": namespace, "spec": spec.to_wire()}, separators=(",", ":"))


def secret_file(name: str, key: str) -> str:
    """Where a Secret key is mounted, relative to the credentials directory."""
    return f"{name}/{key}"


class Output:
    """Writes records to stdout in order, numbering events within the attempt."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.events = 0
        self._last: datetime.datetime | None = None

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        if self._last is not None and now <= self._last:
            now = self._last + datetime.timedelta(microseconds=1)  # times stay strictly increasing
        self._last = now
        self.events += 1
        self._write(protocol.event_line(protocol.Event(self.events, event_type, now, data)))

    def result(self, result: protocol.Result) -> None:
        self._write(protocol.result_line(result))

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


def read_secret_file(root: pathlib.Path) -> base.SecretReader:
    async def read(name: str, key: str) -> str:
        path = root / secret_file(name, key)
        try:
            return path.read_text()
        except OSError:
            raise errors.CredentialsUnavailable(
                f"Secret '{name}' with key '{key}' is not mounted in the runner Pod"
            ) from None

    return read


async def attempt(
    document: dict[str, Any], out: Output, *, secrets_dir: pathlib.Path, layer_registry: registry.LayerRegistry
) -> protocol.Result:
    """Run the agent once; every ending is a result, never an exception."""
    try:
        spec = models.AgentRunSpec.model_validate(document["spec"])
        context = base.RunContext(namespace=str(document["namespace"]), read_secret=read_secret_file(secrets_dir))
        result = await compositor.run(spec, layer_registry, context, out.event)
    except (KeyError, pydantic.ValidationError):
        return protocol.Result(
            protocol.FAILED, reason=models.Reason.INTERNAL_ERROR.value, message="the runner's input is unreadable",
            events=out.events,
        )  # fmt: skip
    except errors.RunFailure as failure:
        return protocol.Result(
            protocol.FAILED,
            reason=failure.reason.value,
            message=failure.message,
            status_code=failure.status_code,
            usage=failure.usage,
            events=out.events,
        )
    except asyncio.CancelledError:
        return protocol.Result(protocol.CANCELLED, message="the runner was stopped (SIGTERM)", events=out.events)
    except Exception:  # a bug in a layer or the agent library still ends with a result (already masked)
        logger.exception("the run failed with an unexpected error")
        return protocol.Result(
            protocol.FAILED,
            reason=models.Reason.INTERNAL_ERROR.value,
            message="the runner hit an unexpected error; see the runner Pod's log",
            events=out.events,
        )
    return protocol.Result(
        protocol.SUCCEEDED,
        output=result.output,
        usage=result.usage,
        session_snapshot=result.session_snapshot,
        events=out.events,
    )


async def _main(input_dir: pathlib.Path, secrets_dir: pathlib.Path, out: Output) -> protocol.Result:
    document = json.loads((input_dir / INPUT_KEY).read_text())
    work = asyncio.ensure_future(
        attempt(document, out, secrets_dir=secrets_dir, layer_registry=registry.LayerRegistry.from_entry_points())
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, work.cancel)
    try:
        return await work
    except asyncio.CancelledError:  # cancelled before the attempt began
        return protocol.Result(protocol.CANCELLED, message="the runner was stopped (SIGTERM)", events=out.events)


def main(
    *,
    input_dir: pathlib.Path = INPUT_DIR,
    secrets_dir: pathlib.Path = SECRETS_DIR,
    termination_log: pathlib.Path = TERMINATION_LOG,
) -> int:
    """Run the attempt; exit 0 once a result is written (whatever it says), 1 if none could be."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Output(sys.stdout)
    result = asyncio.run(_main(input_dir, secrets_dir, out))
    out.result(result)
    token_mounted = TOKEN_DIR.exists()
    if token_mounted:
        logger.warning("an API token is mounted in this Pod; the runner does not need one")
    with contextlib.suppress(OSError):
        termination_log.write_text(protocol.summary(result, token_mounted=token_mounted))
    return 0


def run_cli() -> int:
    try:
        return main()
    except (OSError, ValueError) as error:
        print(f"agentrun runner: cannot read its input: {error}", file=sys.stderr)
        return 1
