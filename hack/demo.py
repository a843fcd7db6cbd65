"""`make demo`: a throwaway control plane, the operator, and the examples, end to end.

Starts etcd + kube-apiserver on loopback, runs ``agentrun operator`` exactly as the
container does, applies ``examples/`` (the echo model: no key, no network), continues
the two-turn conversation from the first turn's session snapshot, runs an Agent, holds a
three-turn conversation in an AgentThread with ``kubectl agentrun chat``, and prints what
``kubectl get`` and ``agentrun events`` show. Run as root, it also starts a real node
(kubelet + containerd, as ``make cluster`` does) and shows a pod-mode run beside the
task-mode ones; ``--no-node`` leaves it out. ``--keep`` leaves it all running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import yaml

import demo_mcp_server
import localcluster
import processes

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKDIR = ROOT / ".demo"
NAMESPACE = "demo"
AGENTRUN = processes.AGENTRUN
ORDER = [
    "hello.yaml",
    "structured-output.yaml",
    "conversation-1.yaml",
    "invalid-blank-prompt.yaml",
    "agent.yaml",
    "agent-run.yaml",
    "thread.yaml",
    "mcp-tools.yaml",
    "agent-with-tools.yaml",
    "limits.yaml",
]
MCP_PORT = 8000  # examples/mcp-tools.yaml points at http://127.0.0.1:8000/mcp
THREAD_TURNS = ["What did I just ask you?", "Thanks. Anything else I should check?"]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Demo:
    def __init__(self, cluster: localcluster.LocalCluster) -> None:
        self.cluster = cluster
        path = os.pathsep.join([str(AGENTRUN.parent), str(cluster.binaries.bin_dir), os.environ.get("PATH", "")])
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PATH": path}

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.cluster.kubectl(*args, stdin=stdin).stdout

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        print(self.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=text).strip())

    def chat(self, thread: str, message: str) -> None:
        result = subprocess.run(
            [str(AGENTRUN), "chat", thread, message, "-n", NAMESPACE],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        print(f'$ kubectl agentrun chat {thread} "{message}"   (exit code {result.returncode})')
        print(result.stderr.rstrip())
        print(result.stdout.rstrip())

    def wait_terminal(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = json.loads(self.kubectl("get", "ar", name, "-n", NAMESPACE, "-o", "json"))
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                return dict(body)
            time.sleep(0.2)
        raise SystemExit(
            f"demo: AgentRun {name} did not finish within {timeout:.0f}s; see the operator log in {WORKDIR}"
        )

    def show_events(self, name: str) -> None:
        result = subprocess.run(
            [str(AGENTRUN), "events", name, "-n", NAMESPACE], env=self.env, capture_output=True, text=True, check=False
        )
        print(f"$ kubectl agentrun events {name}   (exit code {result.returncode})")
        print(result.stdout.rstrip())


@contextlib.contextmanager
def demo_cluster(node: bool) -> Iterator[tuple[localcluster.LocalCluster, str | None]]:
    """The control plane, and the runner image when a real node runs pods (``None`` without one)."""
    if not node:
        banner("Starting a throwaway control plane (etcd + kube-apiserver on 127.0.0.1)")
        with localcluster.running(WORKDIR / "cluster") as cluster:
            yield cluster, None
        return
    from localnode import cluster as nodecluster  # localnode builds on localcluster
    from localnode import host, images

    banner("Starting a throwaway control plane with a real node (kubelet + containerd on a private bridge)")
    host.install_packages()
    operator_image = images.operator_image(images.python_base())
    with nodecluster.running(WORKDIR / "node", [operator_image]) as with_node:
        # A node cluster leaves the CRDs to the chart; the demo runs the operator as a process instead.
        localcluster.LocalCluster.apply_crds(with_node.control_plane)
        print(f"node {with_node.node_name} Ready; runner image {operator_image.name} loaded")
        yield with_node.control_plane, operator_image.name


def run(keep: bool, node: bool) -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    with (
        demo_cluster(node) as (cluster, runner_image),
        demo_mcp_server.ThreadedServer(port=MCP_PORT) as tools,
    ):
        print(f"kube-apiserver {cluster.version()} at {cluster.server}; CRDs from crds/ applied")
        demo = Demo(cluster)
        demo.kubectl("create", "namespace", NAMESPACE)

        banner(f"Starting a local MCP tool server on 127.0.0.1:{MCP_PORT} (hack/demo_mcp_server.py)")
        print(f"tools at {tools.url}")

        banner("Starting the operator: agentrun operator (the container's entry point)")
        pod_settings = {} if runner_image is None else {"runner_image": runner_image}
        operator = processes.OperatorProcess(
            kubeconfig=cluster.kubeconfig,
            namespaces=[],
            log_dir=WORKDIR,
            base_env=demo.env,
            instance="demo-operator",
            **pod_settings,
        ).start()
        print(f"operator {operator.instance} ready; log: {operator.log_path}")
        try:
            banner("Applying examples/")
            for name in [*ORDER, *(["pod-mode.yaml"] if runner_image else [])]:
                demo.apply((ROOT / "examples" / name).read_text())
            finished = ("hello", "summarize-incident", "conversation-1", "blank-prompt", "summarize-incident-42")
            for name in (*finished, "incident-tools", "incident-triage-1", "within-budget", "over-budget"):
                demo.wait_terminal(name)

            banner("Second turn: conversation-2 continues conversation-1's session")
            first = demo.wait_terminal("conversation-1")
            second = yaml.safe_load((ROOT / "examples" / "conversation-2.yaml").read_text())
            second["spec"]["sessionSnapshot"] = first["status"]["sessionSnapshot"]
            print("spec.sessionSnapshot <- kubectl get ar conversation-1 -o jsonpath='{.status.sessionSnapshot}'")
            demo.apply(second)
            demo.wait_terminal("conversation-2")

            banner("A conversation in an AgentThread: two more turns with kubectl agentrun chat")
            demo.wait_terminal("support-chat-turn-1")
            for message in THREAD_TURNS:
                demo.chat("support-chat", message)
            print(demo.kubectl("get", "thread", "-n", NAMESPACE).rstrip())

            if runner_image is not None:
                banner("Pod mode: pod-mode ran in a runner Pod of its own, beside the task-mode runs")
                demo.wait_terminal("pod-mode", timeout=180)
                print(demo.kubectl("get", "pods", "-n", NAMESPACE, "-l", "agentrun.dev/run=pod-mode").rstrip())
            else:
                banner("Pod mode needs a node: run the demo as root (it starts one), or try `make cluster`")

            banner("kubectl get agents")
            print(demo.kubectl("get", "agents", "-n", NAMESPACE).rstrip())
            banner("kubectl get agentruns")
            print(demo.kubectl("get", "ar", "-n", NAMESPACE, "-o", "wide").rstrip())
            for name in (
                "hello",
                "summarize-incident",
                "conversation-1",
                "conversation-2",
                "blank-prompt",
                "summarize-incident-42",
                "incident-tools",
                "incident-triage-1",
                "over-budget",
                *(["pod-mode"] if runner_image else []),
            ):
                banner(name)
                output = demo.kubectl("get", "ar", name, "-n", NAMESPACE, "-o", "jsonpath={.status.output}")
                if output:
                    print(f"output: {output}")
                demo.show_events(name)

            if keep:
                banner("The demo cluster stays up (Ctrl-C to stop it)")
                print(f"export KUBECONFIG={cluster.kubeconfig}")
                print(f"kubectl get ar -n {NAMESPACE}")
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                with contextlib.suppress(KeyboardInterrupt):
                    operator.wait(timeout=None)
        finally:
            operator.stop()
        code = operator.process.returncode if operator.process else None
        banner(f"Operator stopped (exit code {code}); tearing the control plane down")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the cluster and operator running until Ctrl-C")
    parser.add_argument(
        "--node",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="start a real node too, and show a pod-mode run (default: when run as root, which a node needs)",
    )
    args = parser.parse_args()
    return run(args.keep, args.node)


if __name__ == "__main__":
    sys.exit(main())
