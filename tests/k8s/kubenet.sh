# The kubenet phase of tests/k8s/run.sh (sourced; uses its helpers and variables).
#
# AKS kubenet and similar networks: every node owns a pod CIDR (Node.spec.podCIDR), its
# pods sit behind a bridge on the node, and only that node can reach them. Two nodes,
# each with a pod namespace behind a bridge; the control plane routes to neither node
# nor pod. Each agent runs with --node-name: it reads its Node through the API (a
# ServiceAccount token allowed get/watch on nodes) and announces spec.podCIDR as a cidr=
# identifier; proxy-server runs with --proxy-strategies=destHost only, so a pod IP is
# served by the agent whose Node owns its CIDR or by nobody.
#
#   control plane (CP ns)                 node kn1 (10.236.1.2)         node kn2 (10.236.2.2)
#   kube-apiserver ─UDS─ proxy-server ◀── agent --node-name=kn-node-1   agent --node-name=kn-node-2 ──▶
#     (destHost only)                 ◀──────────────────────────────────┘
#                                         cbr0 10.244.1.1/24             cbr0 10.244.2.1/24
#                                         pod 10.244.1.10 (nothing)      pod 10.244.2.10: webhook :8443

KN_NODES=(1 2)
kn_ns() { echo "$TAG-kn$1"; }
kn_pod_ns() { echo "$TAG-kn$1-pod"; }
kn_node_ip() { echo "10.236.$1.2"; }
kn_cp_ip() { echo "10.236.$1.1"; }
kn_pod_ip() { echo "10.244.$1.10"; }
KN_UDS=$W/kubenet-server.socket

# One node: a veth to the control plane (its own /24), a route to $CP_IP through it (the
# agent and its kubeconfig use the control plane's usual address), inbound firewall as
# the main node's; a bridge cbr0 with the node's pod CIDR and one pod namespace on it.
kn_topology() {
  local n ns pns
  for n in "${KN_NODES[@]}"; do
    ns=$(kn_ns "$n")
    pns=$(kn_pod_ns "$n")
    ip netns add "$ns"
    ip netns add "$pns"
    EXTRA_NS+=("$ns" "$pns")
    ip link add "kn$$c$n" netns "$CP" type veth peer name "kn$$n$n" netns "$ns"
    ip -n "$CP" addr add "$(kn_cp_ip "$n")/24" dev "kn$$c$n"
    ip -n "$ns" addr add "$(kn_node_ip "$n")/24" dev "kn$$n$n"
    ip -n "$CP" link set "kn$$c$n" up
    ip -n "$ns" link set "kn$$n$n" up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add "$CP_IP/32" via "$(kn_cp_ip "$n")"
    ip netns exec "$ns" iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ip netns exec "$ns" iptables -A INPUT -i lo -j ACCEPT
    ip netns exec "$ns" iptables -A INPUT -i cbr0 -j ACCEPT
    ip netns exec "$ns" iptables -A INPUT -j DROP
    # The pod network: a bridge on the node, the pod's veth on it.
    ip -n "$ns" link add cbr0 type bridge
    ip -n "$ns" addr add "10.244.$n.1/24" dev cbr0
    ip -n "$ns" link set cbr0 up
    ip link add "kp$$h$n" netns "$ns" type veth peer name eth0 netns "$pns"
    ip -n "$ns" link set "kp$$h$n" master cbr0 up
    ip -n "$pns" addr add "$(kn_pod_ip "$n")/24" dev eth0
    ip -n "$pns" link set eth0 up
    ip -n "$pns" link set lo up
    ip -n "$pns" route add default via "10.244.$n.1"
  done
  say "kubenet: nodes $(kn_ns 1) ($(kn_node_ip 1), pods 10.244.1.0/24) and $(kn_ns 2) ($(kn_node_ip 2), pods 10.244.2.0/24), inbound firewalled, each reaching $CP_IP"
}

kn_objects() {
  local n
  for n in "${KN_NODES[@]}"; do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kn-node-$n
  labels: {kubernetes.io/hostname: kn-node-$n}
spec:
  podCIDR: 10.244.$n.0/24
  podCIDRs: [10.244.$n.0/24]
EOF
  done
  echo ---
  yaml_namespace kn-e2e kubenet
  cat <<EOF
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: kn-agent, namespace: kube-system}
---
# What the chart's agent.podCidrsFromNode grants: get and watch on nodes.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kn-agent-nodes}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kn-agent-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kn-agent-nodes}
subjects:
- {kind: ServiceAccount, name: kn-agent, namespace: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: kn-web, namespace: kn-e2e}
spec:
  nodeName: kn-node-2
  automountServiceAccountToken: false
  containers:
  - name: web
    image: konnectivity-e2e.invalid/none:1
    ports: [{name: https, containerPort: 8443}]
---
EOF
  yaml_service kn-e2e kn-webhook kn-webhook-pod "$(kn_pod_ip 2)" kn-node-2 8443 "{kind: Pod, namespace: kn-e2e, name: kn-web}"
  echo ---
  yaml_webhook kn-e2e-pod deny-prefix-pod.konnectivity-e2e.invalid \
    "service: {namespace: kn-e2e, name: kn-webhook, port: 443, path: /validate/pod}" kubenet
}

# kn_agent N: node N's agent, mTLS to the server, --node-name with the kn-agent token.
kn_agent() {
  local n=$1
  : >"$L/kn-agent-$n.log"
  start "kn-agent-$n" "$(kn_ns "$n")" "$RBIN/proxy-agent" --proxy-server-host="$CP_IP" --proxy-server-port=8091 \
    --ca-cert="$P/ca.crt" --agent-cert="$P/proxy-agent.crt" --agent-key="$P/proxy-agent.key" \
    --agent-id="kn-node-$n" --agent-identifiers="host=kn-node-$n&ipv4=$(kn_node_ip "$n")" \
    --node-name="kn-node-$n" --kubeconfig="$W/kn-agent.kubeconfig" \
    --health-server-port=8093 --admin-server-port=8094 --sync-interval=200ms --sync-interval-cap=1s \
    --drain-timeout=1s
}

# The server's /status names the CIDR node N's agent announced.
kn_announced() { # N CIDR
  in_cp curl -sf -m 5 http://127.0.0.1:8095/status | tr -d ' \n' | grep -q "\"agent_id\":\"kn-node-$1\"[^}]*$2"
}

kn_withdrawn() { ! kn_announced "$@"; }

# A plain HTTP server in the pod that answers after 3 s: long enough to see who holds
# the connection to it.
KN_SLOW='import http.server,time,sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(3); b=b"slow ok"
        self.send_response(200); self.send_header("Content-Length",str(len(b))); self.end_headers(); self.wfile.write(b)
http.server.HTTPServer((sys.argv[1],8080),H).serve_forever()'

# GET /healthz of the pod's HTTPS server through kube-apiserver's pod proxy (dialed
# through the `cluster` egress to the pod IP).
kn_pod_proxy() {
  kc get --raw "/api/v1/namespaces/kn-e2e/pods/https:kn-web:8443/proxy/healthz"
}

# Retries kn_pod_proxy for up to 20 s until it answers ok; prints its last answer.
kn_until_pod_ok() {
  local out end=$((SECONDS + 20))
  until out=$(kn_pod_proxy 2>&1) && [ "$out" = ok ]; do
    [ "$SECONDS" -lt "$end" ] || { echo "$out"; return 1; }
    sleep 0.5
  done
  echo "$out"
}

# The nodes, their pods and the servers in node 2's pod; node 1 and the control plane
# cannot reach that pod.
kn_setup() {
  local m=kubenet
  kn_topology
  cert kn-web kn-webhook.kn-e2e.svc "" serverAuth "DNS:kn-webhook.kn-e2e.svc,IP:$(kn_pod_ip 2)"
  start kn-web "$(kn_pod_ns 2)" "$TDIR/webhook" --listen="$(kn_pod_ip 2):8443" \
    --tls-cert-file="$P/kn-web.crt" --tls-private-key-file="$P/kn-web.key"
  start kn-slow "$(kn_pod_ns 2)" python3 -c "$KN_SLOW" "$(kn_pod_ip 2)"
  wait_until "the pod's webhook on node 2" 20 ip netns exec "$(kn_ns 2)" curl -sf --cacert "$P/ca.crt" "https://$(kn_pod_ip 2):8443/healthz"
  wait_until "the pod's slow HTTP server on node 2" 20 ip netns exec "$(kn_ns 2)" bash -c "</dev/tcp/$(kn_pod_ip 2)/8080"
  if ip netns exec "$(kn_ns 1)" curl -s -m 2 -k "https://$(kn_pod_ip 2):8443/healthz" >/dev/null 2>&1 ||
    in_cp curl -s -m 2 -k "https://$(kn_pod_ip 2):8443/healthz" >/dev/null 2>&1; then
    bad "[$m] node 1 or the control plane reached node 2's pod $(kn_pod_ip 2) directly"
  fi
  ok "[$m] only node 2 reaches its pod $(kn_pod_ip 2); node 1 and the control plane cannot"
}

# kn_pass MODE: proxy-server --mode=MODE (destHost only) and kube-apiserver's egress
# `cluster` in that protocol; both agents; every check through node 2's pod.
kn_pass() {
  local mode=$1 m="kubenet/$1" protocol out n t
  case $mode in grpc) protocol=GRPC ;; http-connect) protocol=HTTPConnect ;; esac
  say "── kubenet, egress 'cluster' = $protocol: pod CIDRs per node (Node.spec.podCIDR), agents with --node-name, proxy-server --proxy-strategies=destHost"
  UDS=$KN_UDS
  : >"$L/proxy-server.log"
  start proxy-server "$CP" "$RBIN/proxy-server" --mode="$mode" --uds-name="$UDS" --server-port=0 \
    --cluster-cert="$P/proxy-server.crt" --cluster-key="$P/proxy-server.key" --cluster-ca-cert="$P/ca.crt" \
    --agent-port=8091 --agent-bind-address="$CP_IP" --health-port=8092 --health-bind-address="$CP_IP" \
    --admin-port=8095 --admin-bind-address=127.0.0.1 --server-id=kn-server --proxy-strategies=destHost
  wait_until "proxy-server /healthz" 20 in_cp curl -sf "http://$CP_IP:8092/healthz"
  start_apiserver "$protocol"
  kn_objects >"$W/kn-objects.yaml"
  out=$(kc apply -f "$W/kn-objects.yaml" 2>&1) || bad "[$m] kubectl apply of the kubenet objects: $out"
  local now
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kc -n kn-e2e patch pod kn-web --subresource=status --type=merge -p "{\"status\":{
    \"phase\":\"Running\",\"hostIP\":\"$(kn_node_ip 2)\",\"podIP\":\"$(kn_pod_ip 2)\",\"podIPs\":[{\"ip\":\"$(kn_pod_ip 2)\"}],\"startTime\":\"$now\",
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null ||
    bad "[$m] patching the pod's status"
  kc -n kube-system create token kn-agent >"$W/kn-agent.token" || bad "[$m] kubectl create token kn-agent"
  token_kubeconfig "$W/kn-agent.kubeconfig" "https://$CP_IP:6443" "$W/kn-agent.token"

  for n in "${KN_NODES[@]}"; do kn_agent "$n"; done
  for n in "${KN_NODES[@]}"; do
    wait_until "agent kn-node-$n announcing its Node's pod CIDR" 30 kn_announced "$n" "10.244.$n.0/24"
  done
  ok "[$m] each agent read its Node (get/watch with its ServiceAccount) and announced spec.podCIDR: $(grep -m1 -o "the Node's pod CIDRs changed.*" "$L/kn-agent-2.log")"

  # kube-apiserver → pod IP on node 2 (pods/proxy dials the pod IP through `cluster`).
  out=$(kn_until_pod_ok) || bad "[$m] pods/kn-web/proxy through the tunnel: $out"
  ok "[$m] kube-apiserver reaches pod $(kn_pod_ip 2) on node 2 through node 2's agent (pods/proxy /healthz: $out)"
  # Socket ownership, not log text: node 2's agent holds the connection to the pod.
  out=$(KC_TIMEOUT=30 kc get --raw "/api/v1/namespaces/kn-e2e/pods/http:kn-web:8080/proxy/" >"$W/kn-slow.out" 2>&1 &
    sleep 1.5
    ip netns exec "$(kn_ns 2)" ss -tnpH state established dst "$(kn_pod_ip 2)"
    wait)
  [ "$(cat "$W/kn-slow.out")" = "slow ok" ] || bad "[$m] pods/proxy to the pod's port 8080: $(cat "$W/kn-slow.out")"
  grep -q "\"proxy-agent\",pid=${PIDS[kn-agent-2]}" <<<"$out" ||
    bad "[$m] the connection to the pod is not held by node 2's agent (pid ${PIDS[kn-agent-2]}): $out"
  ! ip netns exec "$(kn_ns 1)" ss -tnH state established dst "$(kn_pod_ip 2)" | grep -q . ||
    bad "[$m] node 1 holds a connection to node 2's pod"
  ok "[$m] the connection to $(kn_pod_ip 2):8080 belongs to node 2's proxy-agent (pid ${PIDS[kn-agent-2]}): $(head -1 <<<"$out" | tr -s ' ')"

  # A Service whose endpoint is the pod: the webhook by Service denies.
  local cm=deny-kn end=$((SECONDS + 30)) calls
  calls=$(grep -c "/validate/pod 10.244.2.1:[0-9]*: CREATE" "$L/kn-web.log" || true)
  while out=$(printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: kn-e2e}\ndata: {k: v}\n' "$cm" | kc create -f - 2>&1); do
    kc -n kn-e2e delete configmap "$cm" --wait=false >/dev/null 2>&1 || true
    [ "$SECONDS" -lt "$end" ] || bad "[$m] the pod's webhook never denied $cm"
    sleep 1
  done
  grep -q "denied the request: konnectivity-e2e webhook on the node says no to ConfigMap \"$cm\" (called on /validate/pod)" <<<"$out" ||
    bad "[$m] creating $cm failed, but not with the pod's webhook message: $out"
  [ "$(grep -c "/validate/pod 10.244.2.1:[0-9]*: CREATE" "$L/kn-web.log")" -gt "$calls" ] ||
    bad "[$m] the pod's webhook was not called from node 2's bridge address: $(tail -3 "$L/kn-web.log")"
  ok "[$m] webhook by Service (endpoint: the pod on node 2) denies $cm, called from node 2's bridge (10.244.2.1): $out"

  # Without node 2's agent nobody serves its pod CIDR: node 1's agent is not tried.
  stop kn-agent-2
  wait_until "node 2's CIDR to leave the server" 20 kn_withdrawn 2 10.244.2.0/24
  out=$(kn_pod_proxy 2>&1) && bad "[$m] pods/proxy succeeded with node 2's agent stopped: $out"
  if grep -qi "no agent available" <<<"$out"; then
    ok "[$m] node 2's agent stopped: the pod is unreachable ('No agent available'), node 1's agent is never used: $(tail -1 <<<"$out")"
  elif [ "$mode" = http-connect ] && grep -q "code 500: 500 " <<<"$out"; then
    # kube-apiserver passes on only the CONNECT status line (see check_agent_down).
    ok "[$m] node 2's agent stopped: the pod is unreachable (proxy-server's 500), node 1's agent is never used: $(tail -1 <<<"$out")"
  else
    bad "[$m] pods/proxy with node 2's agent stopped failed without 'No agent available': $out"
  fi
  kn_agent 2
  wait_until "node 2's agent back with its CIDR" 30 kn_announced 2 10.244.2.0/24
  t=$SECONDS
  out=$(kn_until_pod_ok) || bad "[$m] pods/proxy after node 2's agent restarted: $out"
  ok "[$m] node 2's agent restarted: the pod is reachable again ($((SECONDS - t)) s)"
}

# Node 1 re-registered with another pod CIDR: its agent follows the watch and
# re-announces (DELETED, then ADDED with the new spec.podCIDR).
kn_node_change() {
  local m=kubenet
  kc delete node kn-node-1 --wait=true >/dev/null || bad "[$m] kubectl delete node kn-node-1"
  wait_until "node 1's old CIDR to leave the server" 20 kn_withdrawn 1 10.244.1.0/24
  printf 'apiVersion: v1\nkind: Node\nmetadata: {name: kn-node-1}\nspec: {podCIDR: 10.244.11.0/24, podCIDRs: [10.244.11.0/24]}\n' |
    kc apply -f - >/dev/null || bad "[$m] re-creating Node kn-node-1"
  wait_until "node 1's agent announcing 10.244.11.0/24" 30 kn_announced 1 10.244.11.0/24
  ok "[$m] Node kn-node-1 re-registered with 10.244.11.0/24: its agent re-announced it (watch): $(grep "pod CIDRs changed" "$L/kn-agent-1.log" | tail -1 | grep -o 'pod_cidrs=[^ ]*')"
}

kn_stop_pass() {
  local n
  for n in "${KN_NODES[@]}"; do stop "kn-agent-$n"; done
  stop kube-apiserver
  stop proxy-server
}

kubenet_phase() {
  kn_setup
  kn_pass http-connect
  kn_stop_pass
  kn_pass grpc
  kn_node_change
  kn_stop_pass
  stop kn-web
  stop kn-slow
  UDS=$W/konnectivity-server.socket
}
