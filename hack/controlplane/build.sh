#!/usr/bin/env bash
# Builds the pinned cluster binaries from Go modules into a cache outside the work
# tree, and prints the bin directory:
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
#     kubectl, in one `go build` of this wrapper module, so shared packages compile once;
#   - etcd, from the same module;
#   - helm;
#   - containerd, its runc shim and ctr (the node's container runtime).
# The directory's name carries the versions and a digest of go.mod and go.sum, so a
# change of any pin builds anew; a second run with the same pins builds nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
KUBERNETES_VERSION=v1.35.4   # keep in step with go.mod
HELM_VERSION=v3.21.4
CONTAINERD_VERSION=v2.2.9
cache_root=${AGENTRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/agentrun}
pins=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
bin="$cache_root/controlplane/kubernetes-$KUBERNETES_VERSION+helm-$HELM_VERSION+containerd-$CONTAINERD_VERSION-$pins/bin"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd helm
  containerd containerd-shim-runc-v2 ctr)

complete() {
  local name
  for name in "${binaries[@]}"; do [ -x "$bin/$name" ] || return 1; done
}

if complete; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is required to build the cluster binaries" >&2; exit 1; }
mkdir -p "$(dirname "$bin")"
# One build at a time: a second caller waits here and then finds the cache complete.
exec 9>"$(dirname "$bin").lock"
flock 9
if complete; then
  echo "$bin"
  exit 0
fi

rm -rf "$bin.partial"
mkdir -p "$bin.partial"
minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
version_flags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION
 -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$minor
 -X k8s.io/component-base/version.gitTreeState=clean
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION
 -X k8s.io/client-go/pkg/version.gitMajor=1
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

cd "$here"
echo "build.sh: building Kubernetes $KUBERNETES_VERSION and etcd (a first run takes minutes)" >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $version_flags" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
  -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3 >&2
echo "build.sh: building helm $HELM_VERSION" >&2
CGO_ENABLED=0 GOBIN="$bin.partial" GOFLAGS= go install -trimpath -ldflags "-s -w \
  -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "build.sh: building containerd $CONTAINERD_VERSION" >&2
containerd=github.com/containerd/containerd/v2
CGO_ENABLED=0 GOBIN="$bin.partial" GOFLAGS= go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X $containerd/version.Version=$CONTAINERD_VERSION -X $containerd/version.Revision=$CONTAINERD_VERSION" \
  "$containerd/cmd/containerd@$CONTAINERD_VERSION" "$containerd/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "$containerd/cmd/ctr@$CONTAINERD_VERSION" >&2
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
