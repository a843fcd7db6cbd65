"""A one-node Kubernetes cluster on this machine: pods really run.

etcd and kube-apiserver run as in ``localcluster.LocalCluster``, but serve on the node
address with the node's own PKI; kube-controller-manager, kube-scheduler, containerd
with runc, one kubelet, kube-proxy and a DNS stub complete the cluster. Everything
listens on loopback or on the pod bridge's address, and pod traffic is never forwarded
out of the machine.

Host paths are fixed, so one node runs per machine: ``start()`` refuses a second one and
first removes what a node that died may have left; ``stop()`` removes everything and
raises ``host.NodeHostError`` listing whatever is still there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import localcluster
import processes
from localnode import configs, host, images, pki

NODE_BINARIES = ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "containerd",
                 "containerd-shim-runc-v2", "ctr")  # fmt: skip


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class NodeControlPlane(localcluster.LocalCluster):
    """etcd and kube-apiserver as ``LocalCluster`` runs them, serving on the node address with the node's PKI."""

    def __init__(
        self, workdir: pathlib.Path, binaries: localcluster.Binaries, layout: configs.Layout, *, audit: bool = False
    ) -> None:
        super().__init__(workdir, binaries, audit=audit)
        self.layout = layout
        self.pki = workdir / "pki"
        self.apiserver_port = layout.apiserver_port
        self.server = f"https://{layout.node_ip}:{layout.apiserver_port}"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.pki / "ca.crt"

    def apply_crds(self, timeout: float = 60.0) -> None:
        """Nothing: on a cluster with a node, the chart installs the CRD, as it does for users."""

    def grant_operator_chart_rbac(self, timeout: float = 30.0) -> None:
        """Nothing: on a cluster with a node, the operator runs in its pod under the chart's own ServiceAccount."""

    def _apiserver_flags(self) -> list[str]:
        replaced = ("--bind-address", "--advertise-address", "--secure-port", "--authorization-mode",
                    "--disable-admission-plugins")  # fmt: skip
        flags = [flag for flag in super()._apiserver_flags() if flag.split("=", 1)[0] not in replaced]
        return [
            *flags,
            f"--bind-address={self.layout.node_ip}",
            f"--advertise-address={self.layout.node_ip}",
            f"--secure-port={self.layout.apiserver_port}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={self.pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.pki / 'ca.crt'}",
            # The node's host name resolves nowhere; asking the machine's resolver would leave the machine.
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
        ]

    def _start_etcd(self) -> None:
        super()._start_etcd()
        assert self._etcd is not None
        host.contain(self._etcd.pid)

    def start_apiserver(self, *, timeout: float = 120.0) -> None:
        try:
            super().start_apiserver(timeout=timeout)
        finally:
            if self._apiserver is not None:
                host.contain(self._apiserver.pid)


class NodeCluster:
    """The control plane plus one node, started and stopped as a whole."""

    def __init__(
        self,
        workdir: pathlib.Path,
        binaries: localcluster.Binaries,
        layout: configs.Layout | None = None,
        *,
        audit: bool = False,
    ) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.layout = layout or configs.Layout()
        self.control_plane = NodeControlPlane(workdir, binaries, self.layout, audit=audit)
        self.pki = self.control_plane.pki
        self.kubeconfig = self.control_plane.kubeconfig
        self.node_name = self.layout.node_name
        self.sandbox_image = images.pause_image()
        self.timings: dict[str, float] = {}
        self._lock = host.MachineLock()
        self._sysctls: dict[str, str] = {}
        self._components: dict[str, subprocess.Popen[bytes]] = {}
        missing = [name for name in NODE_BINARIES if not (binaries.bin_dir / name).is_file()]
        if missing:
            raise host.NodeHostError(
                f"{binaries.bin_dir} lacks {', '.join(missing)}: hack/controlplane/build.sh builds them "
                "(KUBEBUILDER_ASSETS, when set, must hold them too)"
            )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, loaded: Sequence[images.Image] = (), *, timeout: float = 120.0) -> None:
        """Bring the node up until it is Ready, with ``loaded`` images in containerd; stops again on failure."""
        started = time.monotonic()
        host.preflight()
        self._lock.acquire()
        try:
            self._start(loaded, timeout, started)
        except BaseException:
            self.stop(verify=False)
            raise

    def _start(self, loaded: Sequence[images.Image], timeout: float, started: float) -> None:
        stale = host.leftovers(self.layout)
        if stale:
            print(f"localnode: removing what an earlier node left behind:\n{stale.report()}", flush=True)
            earlier = host.saved_sysctls(self.layout)
            host.clean(self.layout, earlier)
            self._verify(earlier, "after an earlier node")
        self._sysctls = host.read_sysctls()
        host.save_sysctls(self.layout, self._sysctls)
        host.prepare_cgroup()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._issue_certificates()
        host.create_bridge(self.layout)
        host.isolate_pods(self.layout)
        host.mount_state(self.layout)
        self._write_configs()
        self._start_containerd(timeout)
        self.load_images([self.sandbox_image])
        self.timings["containerd"] = time.monotonic() - started
        # Large images load while the control plane starts; the node is Ready without them.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            loading = pool.submit(self.load_images, loaded)
            self.control_plane.start(timeout=timeout)
            self.timings["apiserver"] = time.monotonic() - started
            self._start_components()
            self._wait_node_ready(timeout)
            self.timings["ready"] = time.monotonic() - started
            loading.result(timeout=timeout)
        self.timings["images"] = time.monotonic() - started

    def stop(self, *, verify: bool = True) -> None:
        """Stop everything, remove every trace on the machine, and check that nothing is left."""
        try:
            for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager", "dnsmasq", "containerd"):
                process = self._components.pop(name, None)
                if process is not None:
                    _terminate(process)
            # Pods go before the API server, which would otherwise wait for their watches to end.
            host.kill_pods()
            self.control_plane.stop()
            host.clean(self.layout, self._sysctls)
            if verify:
                self._verify(self._sysctls, "after teardown")
        finally:
            self._lock.release()

    def _verify(self, sysctls: dict[str, str], when: str) -> None:
        left = host.leftovers(self.layout, sysctls)
        if left:
            raise host.NodeHostError(f"the local node left traces on this machine {when}:\n{left.report()}")

    # --- access ---------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, check=check)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ctr against the node's containerd, in the namespace the kubelet uses."""
        command = [str(self.binaries.bin_dir / "ctr"), "--address", str(self.layout.containerd_socket), "-n", "k8s.io"]
        result = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise host.NodeHostError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def load_images(self, loaded: Sequence[images.Image]) -> None:
        """Import image archives into the node's containerd, where pods find them without pulling."""
        present = set(self.ctr("images", "list", "--quiet").stdout.split())
        for image in loaded:
            if image.name not in present:
                self.ctr("images", "import", str(image.archive))

    def versions(self) -> dict[str, str]:
        """Versions of what the node runs, for the test report."""
        node = json.loads(self.kubectl("get", "node", self.node_name, "-o", "json").stdout)
        info = node["status"]["nodeInfo"]
        found = {
            "kubernetes": self.control_plane.version(),
            "kubelet": info["kubeletVersion"],
            "runtime": info["containerRuntimeVersion"],
        }
        found.update(host.package_versions(["runc"]))
        return found

    # --- internals ------------------------------------------------------------------------

    def _issue_certificates(self) -> None:
        layout = self.layout
        domain = layout.cluster_domain
        pki.issue(
            self.pki,
            [
                pki.Identity(
                    "apiserver", "kube-apiserver",
                    dns_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                               f"kubernetes.default.svc.{domain}", "localhost"),
                    ip_addresses=(layout.node_ip, layout.kubernetes_service_ip, "127.0.0.1"),
                    server=True,
                ),
                pki.Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters",
                             client=True),
                pki.Identity("kubelet", layout.node_name, dns_names=(layout.node_name,),
                             ip_addresses=(layout.node_ip,), server=True),
                pki.Identity("kubelet-client", f"system:node:{layout.node_name}", "system:nodes", client=True),
                pki.Identity("kube-controller-manager", "system:kube-controller-manager", client=True),
                pki.Identity("kube-scheduler", "system:kube-scheduler", client=True),
                pki.Identity("kube-proxy", "system:kube-proxy", client=True),
            ],
        )  # fmt: skip

    def _component_kubeconfig(self, stem: str, user: str) -> pathlib.Path:
        path = self.workdir / f"{stem}.kubeconfig"
        text = configs.kubeconfig(
            self.control_plane.server, self.pki / "ca.crt", user, self.pki / f"{stem}.crt", self.pki / f"{stem}.key"
        )
        path.write_text(text)
        return path

    def _write_configs(self) -> None:
        layout = self.layout
        for directory in (layout.run_dir, layout.cni_conf_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-agentrun.conflist").write_text(configs.cni_config(layout))
        registries = layout.run_dir / "registries" / "_default"
        registries.mkdir(parents=True, exist_ok=True)
        (registries / "hosts.toml").write_text(configs.registry_hosts())
        (self.workdir / "containerd.toml").write_text(
            configs.containerd_config(
                layout, runc=host.RUNC, cni_bin_dir=host.CNI_BIN_DIR, sandbox_image=self.sandbox_image.name
            )
        )
        resolv = self.workdir / "pod-resolv.conf"
        resolv.write_text("")
        (self.workdir / "kubelet.yaml").write_text(configs.kubelet_config(layout, pki=self.pki, resolv_conf=resolv))
        proxy = self._component_kubeconfig("kube-proxy", "system:kube-proxy")
        (self.workdir / "kube-proxy.yaml").write_text(configs.kube_proxy_config(layout, kubeconfig=proxy))
        self._component_kubeconfig("kubelet-client", f"system:node:{layout.node_name}")
        self._component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
        self._component_kubeconfig("kube-scheduler", "system:kube-scheduler")

    def _env(self) -> dict[str, str]:
        path = ":".join([str(self.binaries.bin_dir), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                         "/sbin", "/bin"])  # fmt: skip
        return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self._components[name] = subprocess.Popen(
            host.contained(argv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self._env()
        )

    def _check_alive(self) -> None:
        for name, process in self._components.items():
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise host.NodeHostError(f"{name} exited with {process.returncode}; {self.workdir}/{name}.log:\n{tail}")

    def _start_containerd(self, timeout: float) -> None:
        binary = self.binaries.bin_dir / "containerd"
        self._spawn("containerd", [str(binary), "--config", str(self.workdir / "containerd.toml")])

        def serving() -> bool:
            self._check_alive()
            return self.layout.containerd_socket.exists() and self.ctr("version", check=False).returncode == 0

        processes.wait_until(serving, timeout=timeout, interval=0.1, what="containerd to serve")

    def _start_components(self) -> None:
        bin_dir = self.binaries.bin_dir
        workdir, pki_dir, layout = self.workdir, self.pki, self.layout
        self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={workdir / 'kube-controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={workdir / 'kube-controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={workdir / 'kube-controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={workdir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--service-cluster-ip-range={layout.service_cidr}",
                f"--cluster-cidr={layout.pod_cidr}",
                "--controllers=*,-cloud-node-lifecycle,-nodeipam",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={workdir / 'kube-scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={workdir / 'kube-scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={workdir / 'kube-scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._spawn("dnsmasq", [host.DNSMASQ, *configs.dnsmasq_args(layout)])
        self._spawn_kubelet()
        self._spawn("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={workdir / 'kube-proxy.yaml'}", "--v=1"])

    def _spawn_kubelet(self) -> None:
        workdir, layout = self.workdir, self.layout
        self._spawn(
            "kubelet",
            [
                str(self.binaries.bin_dir / "kubelet"),
                f"--config={workdir / 'kubelet.yaml'}",
                f"--kubeconfig={workdir / 'kubelet-client.kubeconfig'}",
                f"--hostname-override={layout.node_name}",
                f"--node-ip={layout.node_ip}",
                "--v=1",
            ],
        )

    def stop_kubelet(self) -> None:
        """The node stops reporting, as when it is lost; its containers keep running under containerd."""
        process = self._components.pop("kubelet", None)
        if process is not None:
            _terminate(process)

    def start_kubelet(self, *, timeout: float = 120.0) -> None:
        """The node comes back: the kubelet reports again (and removes containers of Pods deleted meanwhile)."""
        if "kubelet" not in self._components:
            self._spawn_kubelet()
        self._wait_node_ready(timeout)

    def _wait_node_ready(self, timeout: float) -> None:
        def ready() -> bool:
            self._check_alive()
            result = self.kubectl("get", "node", self.node_name, "-o", "json", check=False)
            if result.returncode != 0:
                return False
            conditions = json.loads(result.stdout)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        processes.wait_until(ready, timeout=timeout, interval=0.2, what=f"node {self.node_name} to be Ready")


@contextlib.contextmanager
def running(workdir: pathlib.Path, loaded: Sequence[images.Image] = ()) -> Iterator[NodeCluster]:
    """A started node cluster for the duration of the block; torn down and checked afterwards."""
    cluster = NodeCluster(workdir, localcluster.find_binaries())
    cluster.start(loaded)
    try:
        yield cluster
    finally:
        cluster.stop()
