#!/usr/bin/env bash
# kubectl logs / exec / port-forward and an admission webhook, through konnectivity-rs,
# against a real kube-apiserver — one script, as CI runs it: `bash tests/k8s/run.sh`.
#
#   control-plane netns            node netns (firewall: no connection may be opened
#   ───────────────────            ──────────  from the control plane toward it)
#   etcd, kube-apiserver ─UDS─▶ proxy-server ◀─TLS── proxy-agent ─▶ kubelet stand-in :10250
#   kubectl                                                          webhook :8443
#                                                                    "pod" port 127.0.0.1:7000
#
# kube-apiserver, etcd and kubectl are built from the Go module proxy at the versions
# pinned in tests/k8s/go.mod, once, into a cache outside the work tree
# (${KONNECTIVITY_CACHE:-$HOME/.cache/konnectivity-rs}/k8s-<versions>/); later runs reuse
# them. The scenario runs twice: egress `cluster` over GRPC, then over HTTPConnect
# (with `konnectivity doctor` on the healthy setup and with the node dropping port 10250).
# A third phase, token-leases (leases.sh), runs kube-apiserver on deploy/egress-selector-configuration.yaml,
# dry-runs deploy/*.yaml and charts/konnectivity's presets (helm from tests/tools/build.sh)
# server-side, and runs two proxy-servers (second address
# 10.232.7.3) that authenticate agents by ServiceAccount token (TokenReview) and publish
# Leases, with one agent counting the Leases and joining both.
# A fourth phase, nat (nat.sh), puts two nodes behind a NAT gateway (MASQUERADE; 10.233.x.x):
# kube-apiserver with a Direct egress cannot reach them; through proxy-server and two
# proxy-agents, run with the container args of deploy/konnectivity-server-static-pod.yaml
# and deploy/konnectivity-agent.yaml (agent port 8132, and 443 for one node), it can.
# A fifth, kubenet (kubenet.sh), gives two nodes pod CIDRs behind bridges and agents that
# announce their Node's spec.podCIDR (--node-name) to a destHost-only proxy-server.
# A sixth, top (metrics.sh), runs metrics-server in a pod namespace behind the node
# (10.235.1.0/24) as the aggregated API v1beta1.metrics.k8s.io: kubectl top through the tunnel.
#
# Environment: KONNECTIVITY_CACHE (cache root), KONNECTIVITY_BIN_DIR (prebuilt
# proxy-server/proxy-agent, optionally konnectivity; default: `cargo build --bins` into target/debug),
# K8S_E2E_MODES (default "grpc http-connect token-leases nat kubenet top"), K8S_E2E_KEEP=1 (keep the work dir),
# K8S_BUILD_ONLY=1 (build the Go programs into the cache and stop).
# Needs root (network namespaces, iptables), go, cargo, openssl, curl, iproute2.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
say() { printf '[k8s-e2e %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
# The failure is said twice: where it happened, and again after the logs at the end,
# where a CI page that shows only the tail still shows it.
FAIL_MSG=
die() { FAILED=$((FAILED + 1)); FAIL_MSG=$*; say "FAIL: $*"; exit 1; }

PASSED=0
FAILED=0
PENDING=()
ok() { PASSED=$((PASSED + 1)); say "ok   $*"; }
# A failed assertion stops the run (later steps depend on earlier ones).
bad() { FAILED=$((FAILED + 1)); FAIL_MSG=$*; say "FAIL $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
need=()
for t in ip:iproute2 iptables:iptables curl:curl openssl:openssl; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
tools=(go openssl curl ip iptables timeout)
[ -n "${KONNECTIVITY_BIN_DIR:-}" ] || tools+=(cargo)
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

# ───────────────────────────── builds (cached) ─────────────────────────────
CACHE_ROOT=${KONNECTIVITY_CACHE:-$HOME/.cache/konnectivity-rs}
export GOFLAGS="-mod=readonly -p=2 -buildvcs=false" CGO_ENABLED=0
cd "$HERE"
K8S_VERSION=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
ETCD_VERSION=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
KDIR=$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION
mkdir -p "$KDIR"

# Timed, niced build of one main package into $2; prints wall time and peak RSS.
gobuild() {
  local pkg=$1 out=$2 ld=${3:-}
  local tl
  tl=$(mktemp)
  local t=$SECONDS
  if ! /usr/bin/time -f '%e s wall, peak RSS %M KiB' -o "$tl" \
      nice -n 10 go build -trimpath -ldflags="-s -w $ld" -o "$out.tmp" "$pkg"; then
    cat "$tl" >&2; rm -f "$tl" "$out.tmp"; die "go build $pkg failed"
  fi
  mv "$out.tmp" "$out"
  say "built $(basename "$out") in $((SECONDS - t)) s ($(tail -1 "$tl"))"
  rm -f "$tl"
}
# metrics-server and the aggregated API (mode `top`): build_metrics_server, front_proxy_pki, top_phase.
source "$HERE/metrics.sh"

# One build at a time (scripts/test.sh starts these builds in the background, niced,
# while it builds and tests the Rust side; a run that gets here first waits for it).
exec 8>"$KDIR/.lock"
flock 8
if [ ! -e "$KDIR/.complete" ]; then
  say "building kube-apiserver, etcd and kubectl ($K8S_VERSION, etcd $ETCD_VERSION) into $KDIR (first run only)"
  mkdir -p "$KDIR/bin"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  VER="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
  VER+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  VER+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
  VER+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  gobuild k8s.io/kubernetes/cmd/kube-apiserver "$KDIR/bin/kube-apiserver" "$VER"
  gobuild go.etcd.io/etcd/server/v3 "$KDIR/bin/etcd"
  gobuild k8s.io/kubernetes/cmd/kubectl "$KDIR/bin/kubectl" "$VER"
  touch "$KDIR/.complete"
else
  say "using cached kube-apiserver, etcd and kubectl from $KDIR"
fi

# Our Go helpers: rebuilt when their sources or the module change.
TKEY=$(cat go.mod go.sum kubelet-standin/*.go webhook/*.go internal/*/*.go | sha256sum | cut -c1-16)
TDIR=$KDIR/tools-$TKEY
if [ ! -x "$TDIR/webhook" ]; then
  mkdir -p "$TDIR"
  gobuild ./kubelet-standin "$TDIR/kubelet-standin"
  gobuild ./webhook "$TDIR/webhook"
  find "$KDIR" -maxdepth 1 -name 'tools-*' ! -name "tools-$TKEY" -exec rm -rf {} + 2>/dev/null || true
fi
exec 8>&-
build_metrics_server
if [ "${K8S_BUILD_ONLY:-0}" = 1 ]; then
  say "K8S_BUILD_ONLY: kube-apiserver, etcd, kubectl, metrics-server and the helpers are built"
  exit 0
fi

if [ -n "${KONNECTIVITY_BIN_DIR:-}" ]; then
  RBIN=$KONNECTIVITY_BIN_DIR
else
  say "cargo build --bins"
  (cd "$ROOT" && cargo build --bins -q)
  RBIN=$ROOT/target/debug
fi
for b in proxy-server proxy-agent; do [ -x "$RBIN/$b" ] || die "no $RBIN/$b"; done
# `konnectivity doctor` (the CLI) is checked when the binary has it.
DOCTOR=0
"$RBIN/konnectivity" doctor --help >/dev/null 2>&1 && DOCTOR=1
say "binaries: $("$KDIR/bin/kube-apiserver" --version), etcd $ETCD_VERSION, kubectl $K8S_VERSION, $RBIN/{proxy-server,proxy-agent$([ "$DOCTOR" = 0 ] || echo ,konnectivity)}"

# ───────────────────────────── topology ─────────────────────────────
TAG=k8se2e-$$
CP=$TAG-cp
NODE=$TAG-node
CP_IP=10.232.7.1
CP_IP2=10.232.7.3     # a second control-plane address: the second proxy-server of token-leases
NODE_IP=10.232.7.2
SVC_RANGE=10.232.8.0/24   # never routed anywhere; only a setting kube-apiserver requires
# nat: a gateway namespace and two node namespaces behind it (nat_topology), 10.233.x.x
GW=$TAG-gw
NAT_A=$TAG-nat-a
NAT_B=$TAG-nat-b
NAT_CP_IP=10.233.0.1   # the control plane's address on the gateway's uplink
NAT_GW_IP=10.233.0.2   # the gateway's uplink address: every node connection comes from it
NAT_LAN=10.233.1       # the nodes' LAN: gateway .1, node a .2, node b .3
NAT_A_IP=$NAT_LAN.2
NAT_B_IP=$NAT_LAN.3
declare -A NAT_NS=([a]=$NAT_A [b]=$NAT_B) NAT_IP=([a]=$NAT_A_IP [b]=$NAT_B_IP)
W=$(mktemp -d /tmp/konnectivity-k8s-e2e.XXXXXX)
L=$W/logs
mkdir -p "$L" "$W/pki"
declare -A PIDS=()
EXTRA_NS=()   # namespaces a phase adds (kubenet.sh); deleted by cleanup

stop() { # name: TERM, then KILL after 10 s; bounded
  local n=$1 pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$n]"
}
# stop_now NAME...: our binaries exit at once on a second signal (no drain); for agents
# started without --drain-timeout when draining is not what is tested. Bounded by stop.
stop_now() {
  local n pids=()
  for n in "$@"; do [ -z "${PIDS[$n]:-}" ] || pids+=("${PIDS[$n]}"); done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  sleep 0.2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for n in "$@"; do stop "$n"; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_now nat-agent-a nat-agent-b
  for n in kubectl-pf agent agent-wrong-audience agent-wrong-sa proxy-server-b kube-apiserver proxy-server webhook kubelet etcd; do
    stop "$n"
  done
  for n in "${!PIDS[@]}"; do stop "$n"; done
  for ns in "$CP" "$NODE" "$GW" "$NAT_A" "$NAT_B" "${EXTRA_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [ "$rc" != 0 ]; then
    for f in "$L"/*.log; do
      [ -s "$f" ] || continue
      echo "───── last lines of $(basename "$f") ─────"
      tail -n 40 "$f"
    done
    say "logs kept in $L"
  elif [ "${K8S_E2E_KEEP:-}" = 1 ]; then
    say "work dir kept: $W"
  else
    rm -rf "$W"
  fi
  echo "k8s-e2e: $PASSED passed, $FAILED failed"
  [ -z "$FAIL_MSG" ] || say "the failure: $FAIL_MSG"
  say "total $(($(date +%s) - T0)) s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Namespaces left by an earlier run that was killed before its trap ran.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^k8se2e-[0-9]*-' || true); do
  pid=${ns#k8se2e-}; pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

# firewall_inbound NETNS: the namespace may open connections; nothing may open one toward it.
firewall_inbound() {
  ip netns exec "$1" iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ip netns exec "$1" iptables -A INPUT -i lo -j ACCEPT
  ip netns exec "$1" iptables -A INPUT -j DROP
}

ip netns add "$CP"
ip netns add "$NODE"
ip link add "${TAG}c" netns "$CP" type veth peer name "${TAG}n" netns "$NODE" 2>/dev/null ||
  ip link add "ke$$c" netns "$CP" type veth peer name "ke$$n" netns "$NODE"
VC=$(ip -n "$CP" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1)
VN=$(ip -n "$NODE" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1)
ip -n "$CP" addr add "$CP_IP/24" dev "$VC"
ip -n "$CP" addr add "$CP_IP2/24" dev "$VC"
ip -n "$NODE" addr add "$NODE_IP/24" dev "$VN"
for ns in "$CP" "$NODE"; do ip -n "$ns" link set lo up; done
ip -n "$CP" link set "$VC" up
ip -n "$NODE" link set "$VN" up
firewall_inbound "$NODE" # a NAT-ed node
say "network namespaces $CP ($CP_IP) and $NODE ($NODE_IP, inbound firewalled); work dir $W"

in_cp() { ip netns exec "$CP" "$@"; }
in_node() { ip netns exec "$NODE" "$@"; }

# start NAME NETNS CMD...: background process with its log in $L/NAME.log
start() {
  local n=$1 ns=$2; shift 2
  ip netns exec "$ns" "$@" >>"$L/$n.log" 2>&1 </dev/null &
  PIDS[$n]=$!
}
# wait_until DESC SECONDS CMD...: poll CMD every 0.25 s, bounded; gives up at once
# when one of the started processes has exited.
wait_until() {
  local desc=$1 secs=$2 n; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    for n in "${!PIDS[@]}"; do
      kill -0 "${PIDS[$n]}" 2>/dev/null || die "$n exited while waiting for $desc"
    done
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${secs}s waiting for $desc"
    sleep 0.25
  done
}

# ───────────────────────────── PKI ─────────────────────────────
P=$W/pki
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=konnectivity-rs k8s e2e CA" -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
# cert NAME CN ORG EKU SANS
cert() {
  local n=$1 cn=$2 org=$3 eku=$4 sans=$5
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$cn${org:+/O=$org}" -keyout "$P/$n.key" -out "$P/$n.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$P/$n.ext"
  openssl x509 -req -in "$P/$n.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 2 -sha256 -extfile "$P/$n.ext" -out "$P/$n.crt" 2>/dev/null
}
cert apiserver kube-apiserver "" serverAuth "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,IP:127.0.0.1,IP:$CP_IP,IP:$NAT_CP_IP,IP:10.232.8.1"
cert admin admin system:masters clientAuth ""
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth ""
cert proxy-server proxy-server "" serverAuth "DNS:localhost,IP:127.0.0.1,IP:$CP_IP,IP:$CP_IP2"
cert proxy-agent proxy-agent "" clientAuth ""
cert kubelet "system:node:konn-node" system:nodes serverAuth "DNS:konn-node,IP:$NODE_IP"
cert webhook konn-webhook.konn-e2e.svc "" serverAuth "DNS:konn-webhook.konn-e2e.svc,IP:$NODE_IP"
front_proxy_pki
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
cat >"$W/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$P/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$P/admin.crt", client-key: "$P/admin.key"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
EOF

KUBECTL=$KDIR/bin/kubectl
# kubectl in the control-plane namespace; every call bounded (KC_TIMEOUT seconds, default 60).
kc() { timeout "${KC_TIMEOUT:-60}" ip netns exec "$CP" "$KUBECTL" --kubeconfig="$W/admin.kubeconfig" --request-timeout=30s "$@"; }

# ─────────────────────── long-lived components ───────────────────────
start etcd "$CP" "$KDIR/bin/etcd" --name=cp --data-dir="$W/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=cp=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
LOG_TEXT="konnectivity-e2e log line $(openssl rand -hex 6)"
start kubelet "$NODE" "$TDIR/kubelet-standin" --listen="$NODE_IP:10250" \
  --tls-cert-file="$P/kubelet.crt" --tls-private-key-file="$P/kubelet.key" --client-ca-file="$P/ca.crt" \
  --log-text="$LOG_TEXT" --echo-listen=127.0.0.1:7000
start webhook "$NODE" "$TDIR/webhook" --listen="$NODE_IP:8443" \
  --tls-cert-file="$P/webhook.crt" --tls-private-key-file="$P/webhook.key"
wait_until "etcd" 30 in_cp curl -sf http://127.0.0.1:2379/health
wait_until "kubelet stand-in" 20 in_node curl -sf --cacert "$P/ca.crt" "https://$NODE_IP:10250/healthz"
wait_until "webhook" 20 in_node curl -sf --cacert "$P/ca.crt" "https://$NODE_IP:8443/healthz"

if in_cp curl -s -m 2 -k "https://$NODE_IP:10250/healthz" >/dev/null 2>&1; then
  bad "the control plane reached $NODE_IP:10250 directly: the node is not isolated"
fi
ok "the control plane cannot reach the node's kubelet port directly"

UDS=$W/konnectivity-server.socket
start_proxy_server() { # mode
  start proxy-server "$CP" "$RBIN/proxy-server" --mode="$1" --uds-name="$UDS" --server-port=0 \
    --cluster-cert="$P/proxy-server.crt" --cluster-key="$P/proxy-server.key" --cluster-ca-cert="$P/ca.crt" \
    --agent-port=8091 --agent-bind-address="$CP_IP" --health-port=8092 --health-bind-address="$CP_IP" \
    --admin-port=8095 --admin-bind-address=127.0.0.1 --server-id=e2e-server
  wait_until "proxy-server /healthz" 20 in_cp curl -sf "http://$CP_IP:8092/healthz"
}
# --drain-timeout=1s: a stopped agent exits after 1 s instead of draining (stop() would
# otherwise wait 10 s and KILL it).
start_agent() {
  start agent "$NODE" "$RBIN/proxy-agent" --proxy-server-host="$CP_IP" --proxy-server-port=8091 \
    --ca-cert="$P/ca.crt" --agent-cert="$P/proxy-agent.crt" --agent-key="$P/proxy-agent.key" \
    --agent-id=konn-node --agent-identifiers="host=konn-node&ipv4=$NODE_IP" \
    --health-server-port=8093 --admin-server-port=8094 --sync-interval=200ms --sync-interval-cap=1s \
    --drain-timeout=1s
  wait_until "proxy-server /readyz (agent connected)" 30 in_cp curl -sf "http://$CP_IP:8092/readyz"
}

start_apiserver() { # GRPC|HTTPConnect|deploy|Direct
  if [ "$1" = deploy ]; then
    # The shipped deploy/egress-selector-configuration.yaml, only its socket path changed.
    sed "s#udsName: .*#udsName: $UDS#" "$ROOT/deploy/egress-selector-configuration.yaml" >"$W/egress.yaml"
    grep -q "udsName: $UDS\$" "$W/egress.yaml" || die "deploy/egress-selector-configuration.yaml has no udsName to point at $UDS"
  elif [ "$1" = Direct ]; then
    # No konnectivity: kube-apiserver dials every destination itself.
    cat >"$W/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- {name: cluster, connection: {proxyProtocol: Direct}}
- {name: controlplane, connection: {proxyProtocol: Direct}}
- {name: etcd, connection: {proxyProtocol: Direct}}
EOF
  else
    cat >"$W/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: $1
    transport:
      uds:
        udsName: $UDS
- name: controlplane
  connection:
    proxyProtocol: $1
    transport:
      uds:
        udsName: $UDS
- name: etcd
  connection:
    proxyProtocol: Direct
EOF
  fi
  : >"$L/kube-apiserver.log"
  start kube-apiserver "$CP" "$KDIR/bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$CP_IP" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
    --service-account-signing-key-file="$P/sa.key" --service-cluster-ip-range="$SVC_RANGE" \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --enable-aggregator-routing=true "${FRONT_PROXY_FLAGS[@]}" \
    --egress-selector-config-file="$W/egress.yaml" \
    --enable-priority-and-fairness=false --profiling=false --v=2
  local t=$SECONDS
  KC_TIMEOUT=10 wait_until "kube-apiserver /readyz" 180 kc get --raw=/readyz
  if [ "$1" = deploy ]; then
    say "kube-apiserver ready in $((SECONDS - t)) s (egress: deploy/egress-selector-configuration.yaml, cluster = GRPC over UDS, controlplane Direct)"
  elif [ "$1" = Direct ]; then
    say "kube-apiserver ready in $((SECONDS - t)) s (egress: Direct, no proxy)"
  else
    say "kube-apiserver ready in $((SECONDS - t)) s (egress cluster: $1 over UDS)"
  fi
}

# The YAML helpers below print objects the scenarios apply (objects here, kn_objects in
# kubenet.sh, metrics_objects in metrics.sh), without a `---` line before or after.

# yaml_namespace NS LABEL: Namespace NS, labelled konnectivity-e2e=LABEL (what a scenario's
# webhook configurations select), and its default ServiceAccount.
yaml_namespace() {
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $1
  labels: {konnectivity-e2e: $2}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: $1}
EOF
}

# yaml_service NS NAME SLICE ADDRESS NODE PORT [TARGET_REF] [LABELS]: Service NS/NAME
# (https, port 443 to PORT; labels LABELS if given) and its EndpointSlice SLICE, written
# by hand as no kube-controller-manager runs here: one ready endpoint ADDRESS:PORT on
# Node NODE (for TARGET_REF if given, e.g. its Pod).
yaml_service() {
  local ns=$1 name=$2 slice=$3 addr=$4 node=$5 port=$6 ref=${7:-} labels=${8:-}
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: $ns${labels:+, labels: $labels}}
spec:
  ports: [{name: https, port: 443, targetPort: $port, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $slice
  namespace: $ns
  labels: {kubernetes.io/service-name: $name, endpointslice.kubernetes.io/managed-by: konnectivity-e2e}
addressType: IPv4
endpoints:
- addresses: [$addr]
  conditions: {ready: true}
  nodeName: $node
EOF
  [ -z "$ref" ] || echo "  targetRef: $ref"
  echo "ports: [{name: https, port: $port, protocol: TCP}]"
}

# yaml_webhook NAME HOOK CLIENT_CONFIG NS_LABEL [OBJECT_LABELS]: ValidatingWebhookConfiguration
# NAME, one webhook HOOK reached by CLIENT_CONFIG (`service: {...}` or `url: ...`, with
# the scenario's CA) that validates ConfigMap creation in the namespaces labelled
# konnectivity-e2e=NS_LABEL (only of the objects labelled OBJECT_LABELS, if given); it
# fails closed.
yaml_webhook() {
  cat <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: $1}
webhooks:
- name: $2
  clientConfig:
    $3
    caBundle: $(base64 -w0 "$P/ca.crt")
  rules:
  - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}
  namespaceSelector:
    matchLabels: {konnectivity-e2e: $4}
EOF
  [ -z "${5:-}" ] || printf '  objectSelector:\n    matchLabels: %s\n' "$5"
  cat <<EOF
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
EOF
}

objects() {
  local via cc
  yaml_namespace konn-e2e webhook
  cat <<EOF
---
# What kube-controller-manager (not run here) would create; Pods in kube-system need it.
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: kube-system}
---
EOF
  yaml_service konn-e2e konn-webhook konn-webhook-node "$NODE_IP" konn-node 8443
  for via in service url; do
    if [ $via = service ]; then
      cc="service: {namespace: konn-e2e, name: konn-webhook, port: 443, path: /validate/service}"
    else
      cc="url: https://$NODE_IP:8443/validate/url"
    fi
    echo ---
    yaml_webhook "konn-e2e-$via" "deny-prefix-$via.konnectivity-e2e.invalid" "$cc" webhook "{webhook: $via}"
  done
}

# register_node NODE IP POD: what a kubelet would register: Node NODE (InternalIP IP,
# kubelet port 10250, Ready) and a running Pod konn-e2e/POD on it, container `app`.
register_node() {
  local node=$1 ip=$2 pod=$3 now
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  labels: {kubernetes.io/hostname: $node}
---
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: konn-e2e}
spec:
  nodeName: $node
  automountServiceAccountToken: false
  containers:
  - name: app
    image: konnectivity-e2e.invalid/none:1
EOF
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kc patch node "$node" --subresource=status --type=merge -p "{\"status\":{
    \"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$ip\"},{\"type\":\"Hostname\",\"address\":\"$node\"}],
    \"daemonEndpoints\":{\"kubeletEndpoint\":{\"Port\":10250}},
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"stand-in\",
      \"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
  kc -n konn-e2e patch pod "$pod" --subresource=status --type=merge -p "{\"status\":{
    \"phase\":\"Running\",\"hostIP\":\"$ip\",\"podIP\":\"$ip\",\"startTime\":\"$now\",
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}],
    \"containerStatuses\":[{\"name\":\"app\",\"ready\":true,\"started\":true,\"restartCount\":0,
      \"image\":\"konnectivity-e2e.invalid/none:1\",\"imageID\":\"\",\"containerID\":\"e2e://app\",
      \"state\":{\"running\":{\"startedAt\":\"$now\"}}}]}}" >/dev/null
}

create_objects() {
  objects >"$W/objects.yaml"
  kc apply -f "$W/objects.yaml" >/dev/null
  register_node konn-node "$NODE_IP" konn-pod
  say "created Node konn-node (InternalIP $NODE_IP, kubelet port 10250), Pod konn-e2e/konn-pod on it, ValidatingWebhookConfigurations konn-e2e-service (Service konn-e2e/konn-webhook, EndpointSlice -> $NODE_IP:8443) and konn-e2e-url (https://$NODE_IP:8443/validate/url)"
}

# ───────────────────────────── assertions ─────────────────────────────
# The checks below default to the scenario's node (konn-node, $NODE_IP, its kubelet
# stand-in logging to kubelet.log); the nat phase names its own nodes.

# check_logs MODE [POD NODE_IP KUBELET TEXT]: kubectl logs of POD returns TEXT, and the
# kubelet stand-in KUBELET (its log $L/KUBELET.log) saw the request from NODE_IP.
check_logs() {
  local m=$1 pod=${2:-konn-pod} ip=${3:-$NODE_IP} kubelet=${4:-kubelet} text=${5:-$LOG_TEXT} out
  local on=${2:+ ($pod on $ip)}
  out=$(kc -n konn-e2e logs "$pod" -c app 2>&1) || bad "[$m] kubectl logs$on: $out"
  grep -qF "$text" <<<"$out" || bad "[$m] kubectl logs$on returned something else: $out"
  ok "[$m] kubectl logs$on returns the node's log text: $(head -1 <<<"$out")"
  # The request reached the kubelet from the node's own address (the agent's dial),
  # with kube-apiserver's kubelet client certificate inside the tunnelled TLS.
  local seen
  seen=$(grep "GET /containerLogs/konn-e2e/$pod/app" "$L/$kubelet.log" | tail -1)
  grep -q "from $ip:[0-9]* (client cert \"kube-apiserver-kubelet-client\")" <<<"$seen" ||
    bad "[$m] the kubelet stand-in$on saw the logs request from elsewhere: $seen"
  ok "[$m] kubelet stand-in$on: ${seen#*: }"
}

# check_exec MODE [POD NODE_IP]
check_exec() {
  local m=$1 pod=${2:-konn-pod} ip=${3:-$NODE_IP} out
  local on=${2:+ ($pod on $ip)}
  out=$(printf 'hello through the tunnel\n' | kc -n konn-e2e exec -i "$pod" -c app -- tr a-z A-Z 2>&1) ||
    bad "[$m] kubectl exec -i$on: $out"
  [ "$out" = "HELLO THROUGH THE TUNNEL" ] || bad "[$m] kubectl exec -i$on returned: $out"
  ok "[$m] kubectl exec -i$on (stdin -> tr a-z A-Z -> stdout): $out"
  local rc=0
  out=$(kc -n konn-e2e exec "$pod" -c app -- sh -c 'ip -4 -o addr show scope global | awk "{print \"on\", \$4}"; echo to-stderr >&2; exit 3' 2>&1) || rc=$?
  [ "$rc" = 3 ] || bad "[$m] kubectl exec$on exit code: want 3, got $rc ($out)"
  grep -q "on $ip/24" <<<"$out" && grep -q to-stderr <<<"$out" ||
    bad "[$m] kubectl exec$on output: $out"
  ok "[$m] kubectl exec$on runs on the node (stdout+stderr, exit code 3 propagated): $(tr '\n' ' ' <<<"$out")"
}

# check_port_forward MODE [POD LOCAL_PORT [CMD...]]: a line through kubectl port-forward
# to the pod's port 7000 (the stand-in's echo server on the node's 127.0.0.1:7000) comes
# back; CMD (an assertion) runs while the forward is still open.
check_port_forward() {
  local m=$1 pod=${2:-konn-pod} lport=${3:-17000} out
  shift $(($# < 3 ? $# : 3))
  local on=
  [ "$pod" = konn-pod ] || on=" ($pod)"
  : >"$L/kubectl-pf.log"
  start kubectl-pf "$CP" "$KUBECTL" --kubeconfig="$W/admin.kubeconfig" -n konn-e2e port-forward "pod/$pod" "$lport:7000"
  wait_until "kubectl port-forward listening" 30 grep -q "Forwarding from" "$L/kubectl-pf.log"
  out=$(in_cp timeout 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$lport; printf 'ping %s\n' $$ >&3; read -r line <&3; echo \"\$line\"") ||
    { stop kubectl-pf; bad "[$m] port-forward$on exchange failed: $out"; }
  [ "$out" = "echo from the node: ping $$" ] || { stop kubectl-pf; bad "[$m] port-forward$on exchange returned: $out"; }
  ok "[$m] kubectl port-forward$on carries a TCP exchange to 127.0.0.1:7000 on the node: $out"
  [ $# = 0 ] || "$@"
  stop kubectl-pf
}

configmap() { # name via
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: konn-e2e, labels: {webhook: %s}}\ndata: {k: v}\n' "$1" "$2"
}

# check_webhook MODE VIA: VIA=service (Service + EndpointSlice; kube-apiserver dials it
# through its `cluster` egress) or url (clientConfig.url; dialed through `controlplane`).
check_webhook() {
  local mode=$1 via=$2 out
  local end=$((SECONDS + 30)) cm=deny-$via-$mode
  # The webhook configuration reaches kube-apiserver's informer asynchronously.
  while :; do
    if out=$(configmap "$cm" "$via" | kc create -f - 2>&1); then
      kc -n konn-e2e delete configmap "$cm" --wait=false >/dev/null 2>&1 || true
      [ "$SECONDS" -lt "$end" ] || bad "[$mode] webhook ($via) never denied $cm"
      sleep 1
      continue
    fi
    break
  done
  grep -q "denied the request: konnectivity-e2e webhook on the node says no to ConfigMap \"$cm\" (called on /validate/$via)" <<<"$out" ||
    bad "[$mode] creating $cm failed, but not with the webhook's ($via) message: $out"
  ok "[$mode] webhook by $via (in the node namespace) denies $cm: $out"
  out=$(configmap "allow-$via-$mode" "$via" | kc create -f - 2>&1) || bad "[$mode] webhook ($via): allowed object refused: $out"
  ok "[$mode] webhook by $via allows allow-$via-$mode: $out"
  kc -n konn-e2e delete configmap "allow-$via-$mode" --wait=false >/dev/null 2>&1 || true
}

check_agent_down() {
  stop agent
  wait_until "proxy-server /readyz to report no agent" 20 bash -c "! ip netns exec $CP curl -sf http://$CP_IP:8092/readyz"
  local t=$SECONDS out rc=0
  out=$(kc -n konn-e2e logs konn-pod -c app 2>&1) || rc=$?
  local took=$((SECONDS - t))
  [ "$rc" != 0 ] || bad "[$1] kubectl logs succeeded with the agent stopped: $out"
  [ "$rc" != 124 ] || bad "[$1] kubectl logs hung with the agent stopped (killed after 60 s)"
  [ "$took" -le 10 ] || bad "[$1] kubectl logs took ${took}s to fail with the agent stopped: $out"
  if grep -qi "no agent available" <<<"$out"; then
    ok "[$1] agent stopped: kubectl logs fails in ${took}s: $out"
  elif [ "$1" = http-connect ] && grep -q "while dialing $NODE_IP:10250, code 500: 500 " <<<"$out"; then
    # kube-apiserver's HTTPConnect dialer reports only the CONNECT response's status
    # line and drops its body, where proxy-server (like upstream) says "No agent
    # available"; the reason can only reach the user through the status line.
    ok "[$1] agent stopped: kubectl logs fails in ${took}s with the proxy's 500: $out"
    PENDING+=("[http-connect] the 'No agent available' reason does not reach kubectl (kube-apiserver drops the CONNECT response body; proxy-server answers '500 Internal Server Error')")
  else
    bad "[$1] kubectl logs with the agent stopped failed (${took}s) without 'No agent available': $out"
  fi
  start_agent
  local end=$((SECONDS + 30))
  until out=$(kc -n konn-e2e logs konn-pod -c app 2>&1) && grep -qF "$LOG_TEXT" <<<"$out"; do
    [ "$SECONDS" -lt "$end" ] || bad "[$1] kubectl logs still failing 30 s after the agent restarted: $out"
    sleep 0.5
  done
  ok "[$1] agent restarted: kubectl logs works again"
}

# ─────────────────────────── konnectivity doctor ───────────────────────────
# doctor_server MODE: `konnectivity doctor server` in the control-plane namespace, against
# the running proxy-server's admin port and frontend, for the node's kubelet port.
doctor_server() {
  local fl=()
  [ "$1" != http-connect ] || fl=(--http-connect)
  in_cp timeout 60 "$RBIN/konnectivity" doctor server --admin=127.0.0.1:8095 --uds="$UDS" "${fl[@]}" \
    --node="$NODE_IP" --port=10250 --timeout=10s 2>&1
}
doctor_agent() { # the agent's own flags, as start_agent gives them
  in_node timeout 60 "$RBIN/konnectivity" doctor agent --kubelet-port=10250 --timeout=3s -- \
    --proxy-server-host="$CP_IP" --proxy-server-port=8091 \
    --ca-cert="$P/ca.crt" --agent-cert="$P/proxy-agent.crt" --agent-key="$P/proxy-agent.key" \
    --agent-id=konn-node-doctor --agent-identifiers="host=konn-node&ipv4=$NODE_IP" 2>&1
}

# finding STATUS CHECK TARGET TEXT: the first doctor text line with that status, check and target
finding() { grep -E "^ *$1 +$2 $3: " <<<"$4" | head -1 | sed 's/^ *//'; }

# check_doctor MODE [agent]: doctor reports the healthy setup as healthy; with the node's
# INPUT chain dropping port 10250 (the agent's dial to the kubelet times out) it names
# the cause. With `agent`, also `doctor agent` on the node, with the agent's flags.
check_doctor() {
  local m=$1 side=${2:-} out rc=0 f
  out=$(doctor_server "$m") || rc=$?
  f=$(finding ok dial "$NODE_IP:10250" "$out")
  [ "$rc" = 0 ] && [ -n "$f" ] || bad "[$m] konnectivity doctor server on the healthy setup (exit $rc): $out"
  ok "[$m] konnectivity doctor server, healthy setup: $(tail -1 <<<"$out"); $f"
  if [ "$side" = agent ]; then
    rc=0
    out=$(doctor_agent) || rc=$?
    f=$(finding ok connect "$CP_IP:8091" "$out")
    [ "$rc" = 0 ] && [ -n "$f" ] && [ -n "$(finding ok kubelet "$NODE_IP:10250" "$out")" ] ||
      bad "[$m] konnectivity doctor agent on the healthy setup (exit $rc): $out"
    ok "[$m] konnectivity doctor agent (on the node, with the agent's flags), healthy setup: $(tail -1 <<<"$out"); $f"
  fi
  in_node iptables -I INPUT 1 -p tcp --dport 10250 -j DROP
  rc=0
  out=$(doctor_server "$m") || rc=$?
  local rc2=0 out2=
  [ "$side" != agent ] || { out2=$(doctor_agent) || rc2=$?; }
  in_node iptables -D INPUT -p tcp --dport 10250 -j DROP
  f=$(finding 'timed out' dial "$NODE_IP:10250" "$out")
  [ "$rc" = 1 ] && grep -qi firewall <<<"$f" ||
    bad "[$m] konnectivity doctor server with the node dropping 10250 (exit $rc) does not name a timeout and the firewall: $out"
  ok "[$m] node's iptables drops 10250: doctor server exits 1: $f"
  if [ "$side" = agent ]; then
    f=$(finding 'timed out' kubelet "$NODE_IP:10250" "$out2")
    [ "$rc2" = 1 ] && grep -qi firewall <<<"$f" ||
      bad "[$m] konnectivity doctor agent with the node dropping 10250 (exit $rc2) does not name a timeout and the firewall: $out2"
    ok "[$m] node's iptables drops 10250: doctor agent exits 1: $f"
  fi
}

# shellcheck source=tests/k8s/leases.sh
source "$HERE/leases.sh"
# shellcheck source=tests/k8s/nat.sh
source "$HERE/nat.sh"
# shellcheck source=tests/k8s/kubenet.sh
source "$HERE/kubenet.sh"

# ───────────────────────────── the scenario ─────────────────────────────
for mode in ${K8S_E2E_MODES:-grpc http-connect token-leases nat kubenet top}; do
  case $mode in
    grpc) protocol=GRPC ;;
    http-connect) protocol=HTTPConnect ;;
    token-leases) token_leases; continue ;;
    kubenet) kubenet_phase; continue ;;
    nat) nat; continue ;;
    top) top_phase http-connect; top_phase grpc; continue ;;
    *) die "unknown mode $mode" ;;
  esac
  say "── egress 'cluster' = $protocol over UDS, proxy-server --mode=$mode"
  start_proxy_server "$mode"
  start_agent
  start_apiserver "$protocol"
  create_objects
  check_logs "$mode"
  check_exec "$mode"
  check_port_forward "$mode"
  check_webhook "$mode" service
  check_webhook "$mode" url
  if [ "$DOCTOR" = 1 ]; then
    if [ "$mode" = grpc ]; then check_doctor "$mode" agent; else check_doctor "$mode"; fi
  fi
  check_agent_down "$mode"
  stop kube-apiserver
  stop agent
  stop proxy-server
done

[ "$DOCTOR" = 1 ] || PENDING+=("konnectivity doctor (no $RBIN/konnectivity with a doctor command)")
for p in "${PENDING[@]}"; do say "pending: $p"; done
