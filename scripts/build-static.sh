#!/usr/bin/env bash
# Statically linked proxy-server and proxy-agent for this host (glibc, static-pie), to
# measure memory the way the image runs them: one static binary, no shared C libraries
# mapped. The image links musl instead (see Dockerfile); this is the nearest build a
# machine without the musl Rust target can make (Containerfile.local packs it into an
# image). Host names resolve through glibc's built-in `files` and `dns` sources (glibc
# 2.34 and later), not through loadable NSS modules (LDAP, mdns, systemd's).
#
#   bash scripts/build-static.sh        # prints the directory to give `bench --bin-dir`
#
# STATIC_PROFILE (default release) and STATIC_BINS (default "proxy-server proxy-agent")
# choose what is built: scripts/build-image.sh builds the image's three binaries with
# the dist profile.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${STATIC_TARGET_DIR:-target/static}"
profile="${STATIC_PROFILE:-release}"
bins=()
for b in ${STATIC_BINS:-proxy-server proxy-agent}; do bins+=(--bin "$b"); done
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" -q \
  --target x86_64-unknown-linux-gnu --target-dir "$out" "${bins[@]}"
echo "$out/x86_64-unknown-linux-gnu/$profile"
