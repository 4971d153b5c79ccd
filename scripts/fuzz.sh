#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 20 s each) on stable Rust
# (RUSTC_BOOTSTRAP=1 unlocks the flags cargo-fuzz needs). Fails on any crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd fuzz
for t in packet connect_head parsers frame hpack tunnel socks; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p corpus/$t
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -4
done
echo "fuzz: ok"
