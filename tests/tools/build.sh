#!/usr/bin/env bash
# Builds the operator tools the test suite checks our deploy artifacts with, from the Go
# module registry at the versions pinned in tests/tools/<tool>/go.mod, once, into a cache
# outside the work tree (like tests/k8s/run.sh's kube-apiserver):
#
#   promtool  github.com/prometheus/prometheus/cmd/promtool  (deploy/prometheus-rules.yaml)
#   helm      helm.sh/helm/v4/cmd/helm                       (charts/konnectivity)
#
#   bash tests/tools/build.sh promtool   # prints the binary's path on stdout
#
# The cache entry is ${KONNECTIVITY_CACHE:-$HOME/.cache/konnectivity-rs}/tools/<tool>-<version>-<hash>/,
# keyed on the module's go.mod and go.sum, so changing the pin rebuilds. Progress and the
# build's wall time and peak RSS go to stderr. Needs `go` (and the module proxy, or a
# populated module cache, the first time).
#
# Measured cold (empty GOCACHE, go1.26, 2 cores shared with other builds at load ~12-15):
# promtool 1705 s wall, 8m48s user + 1m10s sys, peak RSS 3.3 GiB; helm 660 s wall,
# 4m18s user + 0m51s sys, peak RSS 1.0 GiB; module downloads 53 s and 20 s. Cached: 0.04 s.
set -euo pipefail

tool=${1:?usage: build.sh promtool|helm}
case $tool in
  # remove_all_sd: promtool without the cloud service-discovery plugins (AWS, Azure, GCE,
  # …; Prometheus' own build tag): `test rules` and `check rules` need none of them.
  promtool) pkg=github.com/prometheus/prometheus/cmd/promtool mod=github.com/prometheus/prometheus tags=remove_all_sd ;;
  helm) pkg=helm.sh/helm/v4/cmd/helm mod=helm.sh/helm/v4 tags= ;;
  *) echo "build.sh: unknown tool $tool (promtool or helm)" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE/$tool"
export GOFLAGS="-mod=readonly -p=2 -buildvcs=false" CGO_ENABLED=0
# The pin, read from go.mod (a cached build needs no Go toolchain).
version=$(awk -v m="$mod" '$1 == m {print $2}' go.mod)
[ -n "$version" ] || { echo "build.sh: $mod is not pinned in tests/tools/$tool/go.mod" >&2; exit 1; }
key=$( (cat go.mod go.sum; [ -z "$tags" ] || echo "tags=$tags") | sha256sum | cut -c1-12)
dir=${KONNECTIVITY_CACHE:-$HOME/.cache/konnectivity-rs}/tools/$tool-$version-$key
out=$dir/$tool
mkdir -p "$dir"
# One build at a time per entry (tests run in parallel and may all ask at once).
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$out" ]; then
  command -v go >/dev/null || { echo "build.sh: cannot build $tool: \`go\` is not installed" >&2; exit 1; }
  echo "build.sh: building $tool $version ($pkg) into $dir (first run only)" >&2
  tl=$(mktemp)
  t=$SECONDS
  if ! /usr/bin/time -f '%e s wall, peak RSS %M KiB' -o "$tl" \
      nice -n 10 go build -trimpath -tags="$tags" -ldflags="-s -w" -o "$out.tmp" "$pkg" >&2; then
    cat "$tl" >&2; rm -f "$tl" "$out.tmp"
    echo "build.sh: go build $pkg failed" >&2
    exit 1
  fi
  mv "$out.tmp" "$out"
  echo "build.sh: built $tool in $((SECONDS - t)) s ($(tail -1 "$tl"))" >&2
  rm -f "$tl"
  # Older pins of the same tool are dead weight.
  find "$(dirname "$dir")" -maxdepth 1 -name "$tool-*" ! -name "$(basename "$dir")" -exec rm -rf {} + 2>/dev/null || true
fi
echo "$out"
