#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent):
# Debian packages for real-network tests (dnsmasq-base: the DNS server of the UDP e2e
# test, the binary only, no system service holding port 53; python3-socks: PySocks, the
# SOCKS5 UDP ASSOCIATE client, checked as a module of Debian's /usr/bin/python3; socat: the
# TLS client of the SOCKS5-over-TLS test), and the
# Go modules of the interop client.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in ip:iproute2 iptables:iptables curl:curl python3:python3 chromium:chromium dnsmasq:dnsmasq-base socat:socat; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# Python modules: imported by Debian's python3 (the tests call /usr/bin/python3).
for module in socks:python3-socks; do
  /usr/bin/python3 -c "import ${module%%:*}" >/dev/null 2>&1 || need+=("${module##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "setup: go is required for the konnectivity-client interop tests" >&2; exit 1; }
(cd tests/go-interop && go mod download)
# Upstream's proxy-server and proxy-agent (pinned, built from the Go module registry)
# for the mixed-fleet tests.
bash tests/upstream/build.sh
echo "setup: ok"
