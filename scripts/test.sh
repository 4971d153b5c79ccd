#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, build, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

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

echo "== promtool and helm from the Go module registry (cached; tests/tools/build.sh)"
# The ops_* e2e tests would build them on first use; building here keeps the cost visible.
bash tests/tools/build.sh promtool >/dev/null
bash tests/tools/build.sh helm >/dev/null

echo "== fuzz (bounded)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh

echo "== tests"
cargo test --workspace -q 2>&1 | tee target/test-output.txt
grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'

echo "== the image (scripts/build-image.sh: buildah, binaries taken out of it and run)"
bash scripts/build-image.sh 2>&1 | tee target/image-output.txt

echo "== real kube-apiserver scenario (tests/k8s/run.sh)"
bash tests/k8s/run.sh 2>&1 | tee target/k8s-e2e-output.txt
grep -qE '^k8s-e2e: [0-9]+ passed, 0 failed' target/k8s-e2e-output.txt
