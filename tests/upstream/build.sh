#!/usr/bin/env bash
# Builds the REAL upstream Konnectivity programs (sigs.k8s.io/apiserver-network-proxy,
# version pinned in go.mod) for the mixed-fleet e2e tests:
#   target/upstream/upstream-proxy-server  (cmd/server)
#   target/upstream/upstream-proxy-agent   (cmd/agent)
# Upstream source is only a module dependency (fetched into the Go module cache), never
# copied here. The first build needs the module proxy and takes a few minutes.
# Usage: tests/upstream/build.sh [OUT_DIR]   (default: <repo>/target/upstream)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${KONNECTIVITY_UPSTREAM_BIN_DIR:-$here/../../target/upstream}}"
mkdir -p "$out"
cd "$here"
go mod download
go build -o "$out/upstream-proxy-server" sigs.k8s.io/apiserver-network-proxy/cmd/server
go build -o "$out/upstream-proxy-agent" sigs.k8s.io/apiserver-network-proxy/cmd/agent
echo "upstream: built $(go list -m -f '{{.Path}} {{.Version}}' sigs.k8s.io/apiserver-network-proxy) into $out"
