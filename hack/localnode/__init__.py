"""A real node for the local cluster: containerd, runc, a kubelet, and the rest of the control plane.

``cluster.NodeCluster`` composes ``localcluster.LocalCluster`` (etcd and kube-apiserver)
with kube-controller-manager, kube-scheduler, containerd, one kubelet, kube-proxy and a
DNS stub, all on this machine; ``images`` makes the images it runs without a registry;
``host`` knows what a node does to the machine and removes it again.
"""
