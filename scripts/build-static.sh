#!/usr/bin/env bash
# Statically linked proxy-server and proxy-agent for this host (glibc, static-pie), to
# measure memory the way the image runs them: one static binary, no shared C libraries
# mapped. The image links musl instead (see Dockerfile); this is the nearest build a
# machine without the musl Rust target can make. Not for shipping: a static glibc binary
# resolves host names only through the host's own NSS libraries.
#
#   bash scripts/build-static.sh        # prints the directory to give `bench --bin-dir`
set -euo pipefail
cd "$(dirname "$0")/.."
out="${STATIC_TARGET_DIR:-target/static}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q \
  --target x86_64-unknown-linux-gnu --target-dir "$out" \
  --bin proxy-server --bin proxy-agent
echo "$out/x86_64-unknown-linux-gnu/release"
