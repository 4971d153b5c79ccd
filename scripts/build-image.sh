#!/usr/bin/env bash
# Builds the OCI image with buildah (no daemon, vfs storage under target/image), takes
# its binaries back out of the image, and runs them: the end-to-end tunnel tests
# (tests in crates/konnectivity-e2e/tests/tunnel.rs, the Go konnectivity-client among
# them) with KONNECTIVITY_BIN_DIR pointed at the extracted proxy-server and proxy-agent.
#
#   bash scripts/build-image.sh                     # Containerfile.local (default)
#   IMAGE_RECIPE=Dockerfile bash scripts/build-image.sh
#   IMAGE_RUN_TESTS=0 bash scripts/build-image.sh   # build and extract only
#
# Recipes:
#   Dockerfile          glibc static-pie binaries (scripts/build-static.sh, dist profile)
#                       built inside rust:1.95-bookworm: needs an image registry that
#                       serves that base image.
#   Containerfile.local FROM scratch with the same binaries, built here first by the
#                       same script: needs crates.io and Debian's buildah, but no image
#                       registry.
# Cost (2 cores, cold): the dist build of three binaries ~6 min, buildah ~10 s, the
# tunnel tests with the image's binaries ~1 min.
# Prints the image's size and leaves the image archive in target/image.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="${IMAGE_RECIPE:-Containerfile.local}"
tag="localhost/konnectivity-rs:test"
out="$PWD/target/image"
mkdir -p "$out"

if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq buildah >/dev/null
fi
# Storage of our own, so nothing here touches (or depends on) the machine's.
bh() { buildah --root "$out/storage" --runroot "$out/run" --storage-driver vfs "$@"; }

echo "== image: build ($recipe)"
start=$SECONDS
case "$recipe" in
  Containerfile.local)
    # The Dockerfile's build stage, run on this machine: glibc static-pie, dist profile.
    bins=$(STATIC_PROFILE=dist STATIC_BINS="proxy-server proxy-agent konnectivity" \
      bash scripts/build-static.sh)
    ctx="$out/context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$bins/proxy-server" "$bins/proxy-agent" "$bins/konnectivity" "$ctx/"
    bh bud --quiet -f "$PWD/Containerfile.local" -t "$tag" "$ctx" >/dev/null
    ;;
  Dockerfile)
    bh bud --quiet -f "$PWD/Dockerfile" -t "$tag" . >/dev/null
    ;;
  *)
    echo "IMAGE_RECIPE must be Containerfile.local or Dockerfile" >&2
    exit 2
    ;;
esac
echo "image: built $tag in $((SECONDS - start)) s"
bh rmi --prune >/dev/null 2>&1 || true  # earlier builds' untagged images

# The image as a registry would hold it (layers gzip-compressed), and its size.
rm -f "$out/konnectivity-rs.oci.tar"
bh push --quiet --compression-format gzip "$tag" "oci-archive:$out/konnectivity-rs.oci.tar"
bh images --format '{{.Name}}:{{.Tag}} {{.Size}} (unpacked)' "$tag" | sed 's/^/image: /'
echo "image: $(du -b "$out/konnectivity-rs.oci.tar" | cut -f1) bytes as an OCI archive" \
  "(gzip layers): $out/konnectivity-rs.oci.tar"
bh inspect --format $'image: entrypoint {{.OCIv1.Config.Entrypoint}} user {{.OCIv1.Config.User}}\n' "$tag"
# The allocator settings (konnectivity_runtime::process::ALLOCATOR_TUNABLES) are in the
# image's environment.
env=$(bh inspect --format '{{.OCIv1.Config.Env}}' "$tag")
grep -q 'GLIBC_TUNABLES=glibc.malloc.mmap_threshold=' <<<"$env" || {
  echo "image: GLIBC_TUNABLES missing from the image's environment: $env" >&2
  exit 1
}
echo "image: environment $env"

echo "== image: extract the binaries"
ctr=$(bh from --quiet "$tag")
trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(bh mount "$ctr")
rm -rf "$out/bin" && mkdir -p "$out/bin"
for b in proxy-server proxy-agent konnectivity; do
  cp "$mnt/$b" "$out/bin/$b"
done
bh umount "$ctr" >/dev/null
ls -l "$out/bin" | sed 's/^/image: /'
file "$out/bin/proxy-server" 2>/dev/null | sed 's/^/image: /' || true

# The entrypoint starts inside the image's own root file system, as the image's user.
# (chroot isolation: an OCI runtime is not available everywhere this runs; crun here
# says "cgroups in hybrid mode not supported".)
echo "== image: the entrypoint, run in the image"
help=$(bh run --isolation chroot "$ctr" -- /proxy-server --help 2>&1)
grep -q -- '--uds-name' <<<"$help"
echo "image: /proxy-server --help ran in the image"
# Host names resolve inside the image (glibc's built-in `files` and `dns` sources; buildah
# mounts the host's /etc/hosts and /etc/resolv.conf as the kubelet mounts the pod's):
# `localhost` gets as far as a refused connection, not a failed lookup.
dial=$(bh run --isolation chroot "$ctr" -- /konnectivity dial --socks5 localhost:1 x:1 \
  </dev/null 2>&1 || true)
grep -q 'Connection refused' <<<"$dial" || {
  echo "image: localhost did not resolve in the image: $dial" >&2
  exit 1
}
echo "image: host names resolve in the image"

if [ "${IMAGE_RUN_TESTS:-1}" = 1 ]; then
  echo "== image: the tunnel tests with the image's binaries"
  KONNECTIVITY_BIN_DIR="$out/bin" cargo test -q -p konnectivity-e2e --test tunnel 2>&1 |
    tee "$out/test-output.txt"
  grep -qE '^test result: ok' "$out/test-output.txt"
fi
echo "image: ok"
