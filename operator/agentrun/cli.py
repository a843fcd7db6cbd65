"""The ``agentrun`` command (also ``kubectl agentrun`` as a kubectl plugin).

Subcommands:

- ``operator``: run the operator (flags and ``AGENTRUN_*`` variables, see ``--help``);
- ``crd``: print, write or check the generated CustomResourceDefinition;
- ``events NAME``: print a run's events, optionally following them until the run ends;
- ``chat THREAD MESSAGE``: take a turn in an AgentThread and print the answer;
- ``runner``: the entry point of a runner Pod (pod mode).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import pathlib
import sys
from collections.abc import Awaitable, Callable, Sequence
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

JSON_NESTING_LIMIT = 20_000
"""Recursion the operator allows for decoding deeply nested objects from the API server."""

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
    crd_parser = commands.add_parser("crd", help="print, write or check the CRDs (AgentRun, Agent)")
    crd_mode = crd_parser.add_mutually_exclusive_group()
    crd_mode.add_argument(
        "--output", "-o", type=pathlib.Path, metavar="DIR", help="write one file per CRD into this directory"
    )
    crd_mode.add_argument(
        "--check", type=pathlib.Path, metavar="DIR", help="exit 1 if a CRD file in DIR differs from the models"
    )
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

    chat_parser = commands.add_parser(
        "chat",
        help="take a turn in an AgentThread and print the answer",
        description=(
            "Create a run in the thread with MESSAGE as the user's prompt, follow it, and print its "
            "output. The run uses the thread's Agent (spec.agentRef), or --agent. Progress goes to "
            "stderr, the answer to stdout. Exit code: as for 'events'."
        ),
    )
    chat_parser.add_argument("thread", help="AgentThread name")
    chat_parser.add_argument("message", help="what to say")
    chat_parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    chat_parser.add_argument("--agent", default=None, help="the Agent to run (default: the thread's)")

    commands.add_parser(
        "runner",
        help="run one attempt inside a runner Pod (the Pod's entry point)",
        description=(
            "Run one attempt of an AgentRun from the input the operator mounted, print progress events "
            "and the result as JSON lines on stdout, and exit. Used as the command of runner Pods."
        ),
    )

    if argv[:1] == ["operator"]:
        return run_operator(argv[1:])
    if argv[:1] == ["runner"] and len(argv) == 1:
        from agentrun.pods import entry  # imported here: the other commands do not need the agent stack

        return entry.run_cli()
    args = parser.parse_args(argv)
    if args.command == "crd":
        return _crd(args.output, args.check)
    if args.command == "chat":
        return asyncio.run(_chat(args.thread, args.message, args.namespace, agent=args.agent))
    return asyncio.run(_events(args.name, args.namespace, follow=args.follow, output=args.output))


def run_operator(argv: Sequence[str]) -> int:
    """Run the operator until SIGTERM/SIGINT; returns the process exit code."""
    # Imported here so `agentrun crd` and `agentrun events` stay light.
    import kopf

    from agentrun import handlers, settings

    config = settings.Settings(_cli_parse_args=list(argv))
    # The watch decodes whole objects: a run whose open fields nest deeper than Python's
    # default recursion limit (the API server accepts such objects) must not stop the watch.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), JSON_NESTING_LIMIT))
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
            # kopf would otherwise ask the passwd database who we are: the image's numeric
            # non-root user has no entry there.
            identity=config.instance,  # type: ignore[arg-type]
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
    "mcp",
    "fastmcp",
)
"""Libraries kept at WARNING whatever the operator's level. At DEBUG they print HTTP
bodies and headers: kubernetes_asyncio every response body (a Secret's data included),
httpcore response headers, mcp and fastmcp tool-call arguments, hpack the request headers it encodes (Authorization
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
    rendered = {pathlib.Path(kind.file).name: crd.render(kind) for kind in crd.kinds()}
    if check is not None:
        stale = [name for name, text in rendered.items() if _read(check / name) != text]
        for name in stale:
            print(f"{check / name} is out of date: run 'make crds'", file=sys.stderr)
        return 1 if stale else 0
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (output / name).write_text(text)
        return 0
    sys.stdout.write("---\n".join(rendered.values()))
    return 0


def _read(path: pathlib.Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _detail(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    parts = []
    keys = ("attempt", "reason", "message", "retryAt", "request", "tool", "args", "outcome", "result")
    for key in (*keys, "output", "outputRef", "usage"):
        if key in data:
            value = data[key]
            shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


def chat_run(thread: str, message: str, agent: str) -> dict[str, Any]:
    """The run that takes one turn in ``thread``: the Agent, plus the user's message as the prompt layer."""
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"generateName": f"{thread}-"},
        "spec": {
            "agentRef": {"name": agent},
            "threadRef": {"name": thread},
            "composition": {"layers": [{"name": "prompt", "type": "plain.prompt", "config": {"user": message}}]},
        },
    }


async def _chat(thread: str, message: str, namespace: str | None, *, agent: str | None) -> int:
    return await _with_cluster(namespace, functools.partial(_take_turn, thread, message, agent=agent))


async def _take_turn(thread: str, message: str, api: Any, namespace: str, *, agent: str | None) -> int:
    from agentrun.kube import store as kube_store

    found = await kube_store.read_thread(api, namespace, thread)
    agent = agent or (found.spec.agent_ref.name if found.spec.agent_ref else None)
    if agent is None:
        print(f"error: AgentThread {namespace}/{thread} names no Agent: pass --agent NAME", file=sys.stderr)
        return EXIT_ERROR
    created = await kube_store.create_run(api, namespace, chat_run(thread, message, agent))
    name = created["metadata"]["name"]
    print(f"run {name}", file=sys.stderr)
    printed = 0
    async for body in kube_store.watch_run(api, namespace, name):
        status = body.get("status") or {}
        for event in status.get("events") or []:
            if event["id"] > printed:
                printed = event["id"]
                print(f"  {event['type']:<14} {_detail(event)}", file=sys.stderr, flush=True)
        phase = models.Phase(status.get("phase", models.Phase.PENDING.value))
        if phase.terminal:
            _print_answer(status)
            return PHASE_EXIT_CODES[phase]
    print(f"error: AgentRun {namespace}/{name} was deleted", file=sys.stderr)
    return EXIT_NOT_FOUND


async def _with_cluster(namespace: str | None, work: Callable[[Any, str], Awaitable[int]]) -> int:
    """Run ``work(api, namespace)`` against the kubeconfig's cluster; API errors become exit codes."""
    from agentrun.kube import connection
    from agentrun.runtime import ports

    try:
        conn = await connection.connect(request_timeout=30.0)
    except Exception as error:  # any kubeconfig problem is reported the same way
        print(f"error: cannot load Kubernetes configuration: {error}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return await work(conn.api, namespace or connection.current_namespace())
    except ports.NotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ports.ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await conn.close()


def _print_answer(status: dict[str, Any]) -> None:
    if status.get("phase") != models.Phase.SUCCEEDED.value:
        print(f"{status.get('phase')} ({status.get('reason')}): {status.get('message') or ''}", file=sys.stderr)
        return
    output = status.get("output")
    if output is None and status.get("outputRef"):
        ref = status["outputRef"]
        print(f"(the answer is in Secret {ref['name']}, key {ref['key']})")
    elif isinstance(output, str):
        print(output)
    else:
        print(json.dumps(output, indent=2))


async def _events(name: str, namespace: str | None, *, follow: bool, output: str) -> int:
    return await _with_cluster(namespace, functools.partial(_print_events, name, follow=follow, output=output))


async def _print_events(name: str, api: Any, namespace: str, *, follow: bool, output: str) -> int:
    from agentrun.kube import store as kube_store
    from agentrun.runtime import ports

    printed = 0
    if output == "table":
        print(f"{'ID':>4}  {'TIME':<27}  {'TYPE':<14}  DETAIL")
    try:
        async for body in kube_store.watch_run(api, namespace, name):
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
    except ports.NotFound:
        print(f"error: AgentRun {namespace}/{name} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"error: AgentRun {namespace}/{name} was deleted", file=sys.stderr)
    return EXIT_NOT_FOUND
