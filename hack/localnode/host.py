"""This machine as the local node uses it: Debian packages, the pod network, and what a node leaves behind.

A node writes to fixed host paths (the kubelet's root, pod logs, CNI state, the
``kubepods`` cgroups), adds iptables chains and changes a few sysctls. ``leftovers()``
lists every trace of a node that is still there; ``clean()`` removes them all, whether
the node was stopped in order or its owner died. The node's own processes run in one
cgroup v2 group, so that none of them can be missed, however they were forked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable

from localnode import configs

# Debian packages the node needs, each with a file that shows it is installed.
PACKAGES = {
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "dnsmasq-base": "/usr/sbin/dnsmasq",
    "buildah": "/usr/bin/buildah",
    "debootstrap": "/usr/sbin/debootstrap",
    "openssl": "/usr/bin/openssl",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
}
RUNC = PACKAGES["runc"]
DNSMASQ = PACKAGES["dnsmasq-base"]
CNI_BIN_DIR = "/usr/lib/cni"

# Paths the kubelet, containerd and the CNI plugins use whatever they are told.
KUBELET_ROOT = pathlib.Path("/var/lib/kubelet")
FIXED_PATHS = (
    KUBELET_ROOT,
    pathlib.Path("/var/log/pods"),
    pathlib.Path("/var/log/containers"),
    pathlib.Path("/var/lib/cni"),
    pathlib.Path("/run/containerd"),
)
LOCK = pathlib.Path("/run/agentrun-node.lock")
CGROUP_NAME = "agentrun-node"
# The node's components that no other tier runs, as build.sh builds them; etcd and kube-apiserver
# are recognised by the node address.
BUILT = "/controlplane/kubernetes-"
NODE_ONLY = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler", "containerd",
             "containerd-shim-runc-v2")  # fmt: skip
# Kernel settings the kubelet, kube-proxy or the bridge plugin may change; restored on teardown.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
IPTABLES = ("iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy")
TRACE = re.compile(r"KUBE-|CNI-|agentrun-node")
DROP_COMMENT = "agentrun-node: pod traffic never leaves this machine"


class NodeHostError(RuntimeError):
    """The machine cannot run the node, or a node left something behind."""


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeHostError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# --- packages ---------------------------------------------------------------------------


def missing_packages() -> list[str]:
    return [package for package, path in PACKAGES.items() if not pathlib.Path(path).exists()]


def install_packages() -> None:
    """``apt-get install`` whatever of ``PACKAGES`` is missing (Debian's stable suite pins the versions)."""
    missing = missing_packages()
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NodeHostError(f"{' '.join(command)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    result = run("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages, check=False)
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def preflight() -> None:
    """Fail with the reason when this machine cannot run a node at all."""
    if os.geteuid() != 0:
        raise NodeHostError("the local node needs root (network, mounts, cgroups)")
    missing = missing_packages()
    if missing:
        raise NodeHostError(
            f"Debian packages missing: {' '.join(missing)}; "
            "`python hack/localcluster.py prepare-node` (run by `make node` and CI) installs them"
        )
    if cgroup2_root() is None:
        raise NodeHostError("no cgroup2 hierarchy is mounted; the node keeps its processes in one")


# --- one node per machine -----------------------------------------------------------------


class MachineLock:
    """Held for a node's whole life: host paths are fixed, so a second node must not start."""

    def __init__(self) -> None:
        self._file: int | None = None

    def acquire(self) -> None:
        descriptor = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = os.read(descriptor, 64).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise NodeHostError(f"a local node is already running on this machine (pid {owner})") from None
            raise
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        self._file = descriptor

    def release(self) -> None:
        if self._file is not None:
            LOCK.unlink(missing_ok=True)
            os.close(self._file)
            self._file = None


# --- cgroups ------------------------------------------------------------------------------


def _cgroup_mounts() -> list[tuple[pathlib.Path, str]]:
    """(mount point, filesystem type) of every cgroup hierarchy."""
    found = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            found.append((pathlib.Path(fields[4]), fstype))
    return found


def cgroup2_root() -> pathlib.Path | None:
    return next((point for point, fstype in _cgroup_mounts() if fstype == "cgroup2"), None)


def node_cgroup() -> pathlib.Path:
    root = cgroup2_root()
    if root is None:
        raise NodeHostError("no cgroup2 hierarchy is mounted")
    return root / CGROUP_NAME


def contained(argv: list[str]) -> list[str]:
    """``argv`` started inside the node's cgroup: the wrapper joins it, then execs the command."""
    procs = node_cgroup() / "cgroup.procs"
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]


def contain(pid: int) -> None:
    """Move an already started process into the node's cgroup (nothing to move if it has exited)."""
    with contextlib.suppress(ProcessLookupError):
        (node_cgroup() / "cgroup.procs").write_text(str(pid))


def _pod_cgroups() -> list[pathlib.Path]:
    """The kubelet's ``kubepods`` cgroups in every hierarchy, deepest first."""
    found: list[pathlib.Path] = []
    for point, _ in _cgroup_mounts():
        top = point / "kubepods"
        if top.is_dir():
            found += sorted((path for path in top.rglob("*") if path.is_dir()), key=lambda p: -len(p.parts))
            found.append(top)
    return found


def _cgroup_pids(directory: pathlib.Path) -> set[int]:
    try:
        return {int(pid) for pid in (directory / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def _node_processes(layout: configs.Layout) -> dict[int, str]:
    """Live processes of a node: its cgroup, the pods' cgroups, and node binaries started elsewhere."""
    pids: set[int] = set()
    group = cgroup2_root()
    if group is not None:
        pids |= _cgroup_pids(group / CGROUP_NAME)
    for directory in _pod_cgroups():
        pids |= _cgroup_pids(directory)
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = pathlib.Path(exe).name
        if (name in NODE_ONLY and BUILT in exe) or (
            name in ("etcd", "kube-apiserver", "dnsmasq") and layout.node_ip in cmdline
        ):
            pids.add(int(proc.name))
    pids.discard(os.getpid())
    described = {}
    for pid in pids:
        try:
            raw = (pathlib.Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        described[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return described


# --- the pod network ----------------------------------------------------------------------


def create_bridge(layout: configs.Layout) -> None:
    """The pod bridge, carrying the node address; the CNI bridge plugin attaches pods to it."""
    run("ip", "link", "add", layout.bridge, "type", "bridge")
    run("ip", "addr", "add", f"{layout.node_ip}/{layout.pod_prefix_length}", "dev", layout.bridge)
    run("ip", "link", "set", layout.bridge, "up")


def mount_state(layout: configs.Layout) -> None:
    """containerd's root on a tmpfs of its own: loading images skips the disk, and teardown is one unmount."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", "mode=0711", "agentrun-node", str(layout.state_dir))


def isolate_pods(layout: configs.Layout) -> None:
    """Drop pod traffic that would be forwarded anywhere but the bridge (the mangle table runs first)."""
    run(
        "iptables", "-t", "mangle", "-I", "FORWARD", "-s", layout.pod_cidr, "!", "-o", layout.bridge,
        "-m", "comment", "--comment", DROP_COMMENT, "-j", "DROP",
    )  # fmt: skip


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        path = pathlib.Path("/proc/sys") / name
        if path.exists():
            values[name] = path.read_text().strip()
    return values


def restore_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        path = pathlib.Path("/proc/sys") / name
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value)


def _iptables_traces() -> dict[str, list[tuple[str, str]]]:
    """Per iptables tool: (table, line) of every chain and rule a node adds."""
    found: dict[str, list[tuple[str, str]]] = {}
    for tool in IPTABLES:
        result = run(f"{tool}-save", check=False)
        table = ""
        for line in result.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif TRACE.search(line):
                found.setdefault(tool, []).append((table, line))
    return found


def _remove_iptables_traces() -> None:
    for tool, lines in _iptables_traces().items():
        chains = [(table, line[1:].split()[0]) for table, line in lines if line.startswith(":")]
        # Rules in the built-in chains that jump into the node's chains, or the node's own DROP rule.
        for table, line in lines:
            if line.startswith("-A ") and not TRACE.match(line[3:]):
                run(tool, "-t", table, "-D", *shlex.split(line)[1:], check=False)
        for table, chain in chains:
            run(tool, "-t", table, "-F", chain, check=False)
        for table, chain in chains:
            run(tool, "-t", table, "-X", chain, check=False)


def _links(layout: configs.Layout) -> list[str]:
    result = run("ip", "-o", "link", "show", check=False)
    found = []
    for line in result.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == layout.bridge or f"master {layout.bridge} " in line:
            found.append(name)
    return found


# --- leftovers ----------------------------------------------------------------------------


def _mounts(layout: configs.Layout) -> list[str]:
    prefixes = [str(path) for path in (layout.run_dir, layout.state_dir, KUBELET_ROOT, pathlib.Path("/run/containerd"))]
    found = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if any(point == prefix or point.startswith(f"{prefix}/") for prefix in prefixes) or point.startswith(
            "/run/netns/cni-"
        ):
            found.append(point)
    return found


def _paths(layout: configs.Layout) -> list[pathlib.Path]:
    candidates = [*FIXED_PATHS, layout.run_dir, layout.state_dir, *pathlib.Path("/run/netns").glob("cni-*")]
    return [path for path in candidates if path.exists() or path.is_symlink()]


@dataclasses.dataclass
class Leftovers:
    """Everything of a node that is still on the machine; empty after a clean teardown."""

    processes: dict[int, str]
    mounts: list[str]
    links: list[str]
    iptables: dict[str, list[tuple[str, str]]]
    paths: list[str]
    cgroups: list[str]
    sysctls: dict[str, tuple[str, str]]

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def report(self) -> str:
        lines = []
        lines += [f"process {pid}: {cmdline[:200]}" for pid, cmdline in sorted(self.processes.items())]
        lines += [f"mount {point}" for point in self.mounts]
        lines += [f"network link {name}" for name in self.links]
        lines += [f"{tool} -t {table}: {line}" for tool, found in self.iptables.items() for table, line in found]
        lines += [f"path {path}" for path in self.paths]
        lines += [f"cgroup {path}" for path in self.cgroups]
        lines += [f"sysctl {name} = {now} (was {was})" for name, (was, now) in self.sysctls.items()]
        return "\n".join(lines)


def leftovers(layout: configs.Layout, sysctls: dict[str, str] | None = None) -> Leftovers:
    node_group = [node_cgroup()] if cgroup2_root() is not None else []
    current = read_sysctls()
    return Leftovers(
        processes=_node_processes(layout),
        mounts=_mounts(layout),
        links=_links(layout),
        iptables=_iptables_traces(),
        paths=[str(path) for path in _paths(layout)],
        cgroups=[str(path) for path in [*_pod_cgroups(), *node_group] if path.exists()],
        sysctls={name: (value, current[name]) for name, value in (sysctls or {}).items() if current.get(name) != value},
    )


def saved_sysctls(layout: configs.Layout) -> dict[str, str]:
    """The sysctls recorded when the node started (empty when none were recorded)."""
    try:
        return dict(json.loads((layout.run_dir / "sysctls.json").read_text()))
    except (OSError, ValueError):
        return {}


def save_sysctls(layout: configs.Layout, values: dict[str, str]) -> None:
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    (layout.run_dir / "sysctls.json").write_text(json.dumps(values))


def kill_pods(timeout: float = 10.0) -> None:
    """SIGKILL every process of every pod (the kubepods cgroups) until none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for directory in _pod_cgroups():
            pids |= _cgroup_pids(directory)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _kill_all(layout: configs.Layout, deadline: float) -> None:
    """SIGKILL every node process until none is left: containers, shims, components."""
    group = cgroup2_root()
    kill_file = group / CGROUP_NAME / "cgroup.kill" if group is not None else None
    while time.monotonic() < deadline:
        processes = _node_processes(layout)
        if not processes:
            return
        if kill_file is not None and kill_file.exists():
            kill_file.write_text("1")
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def clean(layout: configs.Layout, sysctls: dict[str, str], *, timeout: float = 30.0) -> None:
    """Remove every trace of a node: processes, mounts, paths, cgroups, the bridge, iptables rules, sysctls."""
    deadline = time.monotonic() + timeout
    _kill_all(layout, deadline)
    for point in sorted(_mounts(layout), key=lambda p: -len(pathlib.Path(p).parts)):
        run("umount", "--lazy", point, check=False)
    for path in _paths(layout):
        if path.is_dir() and not path.is_symlink():
            run("rm", "-rf", "--one-file-system", str(path), check=False)
        else:
            path.unlink(missing_ok=True)
    group = cgroup2_root()
    cgroups = [*_pod_cgroups(), *([group / CGROUP_NAME] if group is not None else [])]
    while cgroups and time.monotonic() < deadline:
        for directory in list(cgroups):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue  # a process is still exiting; try again
            cgroups.remove(directory)
        if cgroups:
            time.sleep(0.1)
    for name in _links(layout):
        run("ip", "link", "delete", name, check=False)
    _remove_iptables_traces()
    restore_sysctls(sysctls)


def prepare_cgroup() -> None:
    node_cgroup().mkdir(exist_ok=True)
