#!/usr/bin/env bash
# Builds the pinned test control plane (kube-apiserver, kubectl, etcd, helm) from
# Go modules into a cache outside the work tree, and prints the bin directory.
# A second run with the same versions reuses the cache and builds nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
KUBERNETES_VERSION=v1.35.4   # keep in step with go.mod
HELM_VERSION=v3.21.4
cache_root=${AGENTRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/agentrun}
bin="$cache_root/controlplane/kubernetes-$KUBERNETES_VERSION+helm-$HELM_VERSION/bin"

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is required to build the control plane" >&2; exit 1; }
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
echo "build.sh: building kube-apiserver, kubectl, etcd $KUBERNETES_VERSION (first run takes minutes)" >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $version_flags" \
  -o "$bin.partial/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
  -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3 >&2
echo "build.sh: building helm $HELM_VERSION" >&2
CGO_ENABLED=0 GOBIN="$bin.partial" GOFLAGS= go install -trimpath -ldflags "-s -w \
  -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
