#!/usr/bin/env bash
# Statically linked binaries (glibc, static-pie): what the image ships (Dockerfile and
# scripts/build-image.sh run this with the dist profile), and what `konnectivity bench
# --bin-dir` measures to see memory the way the image runs it: one static binary, no
# shared C libraries mapped. glibc rather than musl for its allocator: with musl's the
# same code was 1.5 x slower on bulk data and held 19 % more memory per tunneled
# connection (BENCHMARKS.md, "The image's C library"). Host names resolve through
# glibc's built-in `files` and `dns` sources (glibc 2.34 and later), not through
# loadable NSS modules (LDAP, mdns, systemd's); the tunnel tests check it with the
# image's binaries.
#
#   bash scripts/build-static.sh        # prints the directory to give `bench --bin-dir`
#
# STATIC_PROFILE (default release), STATIC_BINS (default "proxy-server proxy-agent") and
# STATIC_TARGET_DIR (default target/static) choose what is built and where.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${STATIC_TARGET_DIR:-target/static}"
profile="${STATIC_PROFILE:-release}"
bins=()
for b in ${STATIC_BINS:-proxy-server proxy-agent}; do bins+=(--bin "$b"); done
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" -q \
  --target x86_64-unknown-linux-gnu --target-dir "$out" "${bins[@]}"
echo "$out/x86_64-unknown-linux-gnu/$profile"
