"""The ``agentrun`` command (also ``kubectl agentrun`` as a kubectl plugin).

Subcommands:

- ``operator``: run the operator (flags and ``AGENTRUN_*`` variables, see ``--help``);
- ``crd``: print, write or check the generated CustomResourceDefinition;
- ``events NAME``: print a run's events, optionally following them until the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from agentrun import __version__
from agentrun.api import crd, models
from agentrun.layers import redaction

# Exit codes of `agentrun events`, so scripts can tell how a run ended.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_NOT_FINISHED = 4
EXIT_NOT_FOUND = 5
EXIT_ERROR = 6

PHASE_EXIT_CODES = {
    models.Phase.SUCCEEDED: EXIT_SUCCEEDED,
    models.Phase.FAILED: EXIT_FAILED,
    models.Phase.CANCELLED: EXIT_CANCELLED,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="agentrun", description="Run AI agent requests as Kubernetes resources.")
    parser.add_argument("--version", action="version", version=f"agentrun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("operator", help="run the operator (see 'agentrun operator --help')", add_help=False)
    crd_parser = commands.add_parser("crd", help="print, write or check the AgentRun CRD")
    crd_mode = crd_parser.add_mutually_exclusive_group()
    crd_mode.add_argument("--output", "-o", type=pathlib.Path, help="write the CRD to this file")
    crd_mode.add_argument("--check", type=pathlib.Path, metavar="FILE", help="exit 1 if FILE differs from the models")
    events_parser = commands.add_parser(
        "events",
        help="print a run's events",
        description=(
            "Print a run's events. Exit code: 0 Succeeded, 1 Failed, 3 Cancelled, "
            "4 not finished (without --follow), 5 not found, 6 API error."
        ),
    )
    events_parser.add_argument("name", help="AgentRun name")
    events_parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    events_parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    events_parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")

    if argv[:1] == ["operator"]:
        return run_operator(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "crd":
        return _crd(args.output, args.check)
    return asyncio.run(_events(args.name, args.namespace, follow=args.follow, output=args.output))


def run_operator(argv: Sequence[str]) -> int:
    """Run the operator until SIGTERM/SIGINT; returns the process exit code."""
    # Imported here so `agentrun crd` and `agentrun events` stay light.
    import kopf

    from agentrun import handlers, settings

    config = settings.Settings(_cli_parse_args=list(argv))
    log_format = kopf.LogFormat.JSON if config.log_format is settings.LogFormat.JSON else kopf.LogFormat.PLAIN
    kopf.configure(log_format=log_format, log_refkey="object")
    configure_logging(config.log_level)
    context = handlers.OperatorContext(settings=config)
    asyncio.run(
        kopf.operator(
            registry=handlers.build_registry(),
            memo=kopf.Memo(context=context),
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            standalone=True,
        )
    )
    return 0


QUIET_LOGGERS = (
    "kubernetes_asyncio",
    "aiohttp.access",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "openai",
    "hpack",
    "h2",
)
"""Libraries kept at WARNING whatever the operator's level. At DEBUG they print HTTP
bodies and headers: kubernetes_asyncio every response body (a Secret's data included),
httpcore response headers, hpack the request headers it encodes (Authorization
included). Their per-request lines at INFO add nothing an operator can act on."""


def configure_logging(level: str) -> None:
    """Apply the operator's log level, keep the HTTP stack quiet, and mask credentials."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    # kopf logs every handled watch event at INFO; the operator logs what matters itself.
    if root.getEffectiveLevel() >= logging.INFO:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in root.handlers:
        if not any(isinstance(existing, CredentialFilter) for existing in handler.filters):
            handler.addFilter(CredentialFilter())


class CredentialFilter(logging.Filter):
    """Masks what looks like a credential in a log record: its message and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            masked = redaction.redact_credentials(message)
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info:
                # Formatted here so the masked text is what every formatter prints.
                text = record.exc_text or logging.Formatter().formatException(record.exc_info)
                record.exc_info, record.exc_text = None, redaction.redact_credentials(text)
        except Exception:  # a record that cannot be formatted is the handler's to report, not ours
            return True
        return True


def _crd(output: pathlib.Path | None, check: pathlib.Path | None) -> int:
    text = crd.render()
    if check is not None:
        if check.read_text() != text:
            print(f"{check} is out of date: run 'make crds'", file=sys.stderr)
            return 1
        return 0
    if output is not None:
        output.write_text(text)
        return 0
    sys.stdout.write(text)
    return 0


def _detail(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    parts = []
    for key in ("attempt", "reason", "message", "retryAt", "request", "tool", "output", "outputRef", "usage"):
        if key in data:
            value = data[key]
            shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


async def _events(name: str, namespace: str | None, *, follow: bool, output: str) -> int:
    from agentrun.kube import connection
    from agentrun.kube import store as kube_store
    from agentrun.runtime import ports

    try:
        conn = await connection.connect(request_timeout=30.0)
    except Exception as error:  # any kubeconfig problem is reported the same way
        print(f"error: cannot load Kubernetes configuration: {error}", file=sys.stderr)
        return EXIT_ERROR
    namespace = namespace or connection.current_namespace()
    printed = 0
    if output == "table":
        print(f"{'ID':>4}  {'TIME':<27}  {'TYPE':<14}  DETAIL")
    try:
        async for body in kube_store.watch_run(conn.api, namespace, name):
            status = body.get("status") or {}
            for event in status.get("events") or []:
                if event["id"] <= printed:
                    continue
                if event["id"] > printed + 1 and output == "table":
                    print(f"{'':>4}  ({event['id'] - printed - 1} older events dropped from the ring)")
                printed = event["id"]
                if output == "json":
                    print(json.dumps(event, separators=(",", ":")), flush=True)
                else:
                    print(f"{event['id']:>4}  {event['time']:<27}  {event['type']:<14}  {_detail(event)}", flush=True)
            phase = models.Phase(status.get("phase", models.Phase.PENDING.value))
            if phase.terminal:
                return PHASE_EXIT_CODES[phase]
            if not follow:
                return EXIT_NOT_FINISHED
        print(f"error: AgentRun {namespace}/{name} was deleted", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ports.NotFound:
        print(f"error: AgentRun {namespace}/{name} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ports.ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await conn.close()
