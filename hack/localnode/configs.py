"""The node's configuration files, as pure functions of its layout.

Nothing here touches the machine: each function returns the text or the command line
that a component is started with, so the settings this machine needs are in one place.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import yaml


@dataclasses.dataclass(frozen=True)
class Layout:
    """Names, addresses and fixed host paths of the one node this machine can run.

    The node address is the pod bridge's own gateway address: the kubelet rejects a
    loopback node IP, and a private bridge keeps every server off the outside interface.
    """

    node_name: str = "agentrun-node"
    bridge: str = "agentrun0"
    node_ip: str = "10.88.0.1"
    pod_cidr: str = "10.88.0.0/16"
    service_cidr: str = "10.0.0.0/24"
    kubernetes_service_ip: str = "10.0.0.1"
    cluster_domain: str = "cluster.local"
    apiserver_port: int = 6443
    kubelet_port: int = 10250
    # Runtime state (sockets, containerd's state, network namespaces, CNI configuration).
    run_dir: pathlib.Path = pathlib.Path("/run/agentrun-node")
    # containerd's root: image content and snapshots, on a tmpfs mounted for the node's life.
    state_dir: pathlib.Path = pathlib.Path("/var/lib/agentrun-node")

    @property
    def containerd_socket(self) -> pathlib.Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> pathlib.Path:
        return self.run_dir / "cni" / "net.d"

    @property
    def pod_prefix_length(self) -> int:
        return int(self.pod_cidr.split("/")[1])


def containerd_config(layout: Layout, *, runc: str, cni_bin_dir: str, sandbox_image: str) -> str:
    """containerd's configuration (version 3): CRI on runc with cgroupfs, CNI, no pulls from outside."""
    return f"""\
version = 3
root = "{layout.state_dir / "containerd"}"
state = "{layout.run_dir / "containerd"}"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.run_dir / "containerd" / "containerd.sock.ttrpc"}"

[plugins."io.containerd.cri.v1.runtime"]
  # The machine's bounding set lacks CAP_SYS_RESOURCE: lowering a process's
  # oom_score_adj is refused, and without this every sandbox fails to start.
  restrict_oom_score_adj = true
  # Network namespaces under the node's own state directory, not /run/netns.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin_dir}"]
    conf_dir = "{layout.cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

  # Every registry resolves to a closed loopback port: an image that was not loaded
  # fails at once instead of being fetched from outside the machine.
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{layout.run_dir / "registries"}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


# A closed port on loopback: connecting fails immediately, and nothing leaves the machine.
CLOSED_REGISTRY = "https://127.0.0.1:9"


def registry_hosts() -> str:
    """``hosts.toml`` for containerd's ``_default`` registry directory: every pull goes nowhere."""
    return f'server = "{CLOSED_REGISTRY}"\n\n[host."{CLOSED_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'


def cni_config(layout: Layout) -> str:
    """The pod network: the node's bridge, addresses from the pod range, no masquerading."""
    network = {
        "cniVersion": "1.0.0",
        "name": "agentrun",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.run_dir / "cni" / "networks"),
                    "ranges": [[{"subnet": layout.pod_cidr, "gateway": layout.node_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }
    return json.dumps(network, indent=2) + "\n"


def kubelet_config(layout: Layout, *, pki: pathlib.Path, resolv_conf: pathlib.Path) -> str:
    """KubeletConfiguration for cgroup v1 with cgroupfs, serving on the node address only."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.node_ip,
        "port": layout.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # 1.35 refuses cgroup v1 unless told otherwise; this machine has v1 hierarchies.
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [layout.node_ip],
        "clusterDomain": layout.cluster_domain,
        # Pods see the cluster's DNS only, never the machine's resolvers.
        "resolvConf": str(resolv_conf),
        # Loaded images cannot be pulled again: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
        "logging": {"format": "text"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(layout: Layout, *, kubeconfig: pathlib.Path) -> str:
    """KubeProxyConfiguration: iptables mode, node ports on the node address only, sysctls left alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": layout.node_name,
        "bindAddress": layout.node_ip,
        "healthzBindAddress": "",
        "metricsBindAddress": "",
        "mode": "iptables",
        "clusterCIDR": layout.pod_cidr,
        "nodePortAddresses": [f"{layout.node_ip}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # Zero leaves the machine's conntrack settings as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "logging": {"format": "text"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def dnsmasq_args(layout: Layout) -> list[str]:
    """A DNS stub on the node address: the API server's Service name, nothing else, no upstream."""
    domain = layout.cluster_domain
    return [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--pid-file",
        f"--listen-address={layout.node_ip}",
        "--bind-interfaces",
        "--port=53",
        f"--address=/kubernetes.default.svc.{domain}/{layout.kubernetes_service_ip}",
        f"--local=/{domain}/",
        "--log-facility=-",
    ]


def kubeconfig(server: str, ca: pathlib.Path, user: str, cert: pathlib.Path, key: pathlib.Path) -> str:
    """A kubeconfig that authenticates with a client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    return yaml.safe_dump(config, sort_keys=False)
