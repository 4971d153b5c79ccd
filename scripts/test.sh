#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, build, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The Go programs the later steps need (promtool and helm for the ops tests,
# kube-apiserver, etcd, kubectl and metrics-server for tests/k8s/run.sh; ~30 CPU-minutes cold, cached
# under ~/.cache/konnectivity-rs after) build in the background at the lowest CPU
# priority, in the gaps the Rust steps leave (links, the single-threaded fuzzing, tests
# that wait on timers). Whoever needs one first waits on its lock; a failed build is
# retried in the foreground by its user.
mkdir -p target
(
  nice -n 19 bash tests/tools/build.sh promtool >/dev/null &&
    nice -n 19 bash tests/tools/build.sh helm >/dev/null &&
    K8S_BUILD_ONLY=1 nice -n 19 bash tests/k8s/run.sh
) >target/go-tools-build.log 2>&1 &
go_tools=$!

echo "== one crypto provider (ring) in the tree"
if cargo tree -q -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc-rs is in the dependency tree; konnectivity-rs uses ring only" >&2
  exit 1
fi

echo "== rustfmt"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)

echo "== build"
cargo build --workspace --bins --tests -q

echo "== clippy (warnings are errors; tests may unwrap, see clippy.toml)"
cargo clippy --workspace --all-targets -q -- -D warnings

echo "== fuzz (bounded)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh

echo "== tests"
cargo test --workspace -q 2>&1 | tee target/test-output.txt
grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'

echo "== the image (scripts/build-image.sh: buildah, binaries taken out of it and run)"
bash scripts/build-image.sh 2>&1 | tee target/image-output.txt

echo "== the Go programs' background build"
wait "$go_tools" || echo "(the background build failed; the steps below build what they need themselves)"
grep -E '(built|building) ' target/go-tools-build.log || true

echo "== real kube-apiserver scenario (tests/k8s/run.sh)"
bash tests/k8s/run.sh 2>&1 | tee target/k8s-e2e-output.txt
grep -qE '^k8s-e2e: [0-9]+ passed, 0 failed' target/k8s-e2e-output.txt
