"""The node's configuration files carry the settings this machine needs (no node is started here)."""

from __future__ import annotations

import json
import pathlib
import tomllib

import yaml

from localnode import configs

LAYOUT = configs.Layout()


def test_containerd_restricts_oom_score_adj_uses_cgroupfs_and_pulls_from_nowhere() -> None:
    text = configs.containerd_config(LAYOUT, runc="/usr/sbin/runc", cni_bin_dir="/usr/lib/cni", sandbox_image="p:1")
    config = tomllib.loads(text)
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert runtime["cni"]["conf_dir"] == str(LAYOUT.cni_conf_dir)
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "p:1"
    hosts = tomllib.loads(configs.registry_hosts())
    assert hosts["server"].startswith("https://127.0.0.1:")
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["stream_server_address"] == "127.0.0.1"


def test_kubelet_accepts_cgroup_v1_and_serves_on_the_node_address_only() -> None:
    config = yaml.safe_load(
        configs.kubelet_config(LAYOUT, pki=pathlib.Path("/pki"), resolv_conf=pathlib.Path("/empty"))
    )
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["address"] == LAYOUT.node_ip
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["clusterDNS"] == [LAYOUT.node_ip]
    assert config["resolvConf"] == "/empty"


def test_pod_network_is_the_bridge_without_masquerading() -> None:
    [bridge] = json.loads(configs.cni_config(LAYOUT))["plugins"]
    assert (bridge["bridge"], bridge["ipMasq"]) == (LAYOUT.bridge, False)
    [[subnet]] = bridge["ipam"]["ranges"]
    assert subnet == {"subnet": LAYOUT.pod_cidr, "gateway": LAYOUT.node_ip}


def test_dns_stub_answers_the_api_server_service_and_has_no_upstream() -> None:
    args = configs.dnsmasq_args(LAYOUT)
    assert "--no-resolv" in args
    assert f"--listen-address={LAYOUT.node_ip}" in args
    assert f"--address=/kubernetes.default.svc.cluster.local/{LAYOUT.kubernetes_service_ip}" in args
    assert not [arg for arg in args if arg.startswith("--server")]


def test_kube_proxy_leaves_sysctls_and_localhost_alone() -> None:
    config = yaml.safe_load(configs.kube_proxy_config(LAYOUT, kubeconfig=pathlib.Path("/k")))
    assert config["mode"] == "iptables"
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["nodePortAddresses"] == [f"{LAYOUT.node_ip}/32"]
    assert config["conntrack"]["maxPerCore"] == 0
