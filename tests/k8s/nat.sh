# The nat phase of tests/k8s/run.sh (sourced; uses its helpers and variables).
#
# Two nodes behind a NAT gateway, agents run with the container args of deploy/*.yaml.
# Entry point: nat.

# ─────────────── nat: two nodes behind a NAT gateway, deploy/*.yaml's args ───────────────
#   control plane (nat0 10.233.0.1) ── gateway (wan0 10.233.0.2, MASQUERADE) ── bridge lan0
#   10.233.1.1 ── node a (10.233.1.2), node b (10.233.1.3)
# Every node connection reaches the control plane from 10.233.0.2. The control plane has
# no route to 10.233.1.0/24, the gateway forwards only connections opened from the LAN,
# and each node drops every connection opened toward it (firewall_inbound). The control
# plane's edge maps 443 to the agent port 8132 (as AKS's load balancer fronts its
# servers on 443); node b's agent dials 443.
nat_topology() {
  local ns
  for ns in "$GW" "$NAT_A" "$NAT_B"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  # Device names are per namespace: each end is created inside its own.
  ip link add nat0 netns "$CP" type veth peer name wan0 netns "$GW"
  ip -n "$CP" addr add "$NAT_CP_IP/24" dev nat0
  ip -n "$CP" link set nat0 up
  in_cp iptables -t nat -A PREROUTING -i nat0 -p tcp --dport 443 -j REDIRECT --to-ports 8132
  ip -n "$GW" addr add "$NAT_GW_IP/24" dev wan0
  ip -n "$GW" link set wan0 up
  ip -n "$GW" link add lan0 type bridge
  ip -n "$GW" addr add "$NAT_LAN.1/24" dev lan0
  ip -n "$GW" link set lan0 up
  local n ip
  for n in a b; do
    ns=${NAT_NS[$n]} ip=${NAT_IP[$n]}
    ip link add eth0 netns "$ns" type veth peer name "lan-$n" netns "$GW"
    ip -n "$GW" link set "lan-$n" master lan0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$NAT_LAN.1"
    firewall_inbound "$ns"
  done
  ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$GW" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
  ip netns exec "$GW" iptables -P FORWARD DROP
  ip netns exec "$GW" iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ip netns exec "$GW" iptables -A FORWARD -i lan0 -o wan0 -j ACCEPT
  say "nat: $GW ($NAT_GW_IP, MASQUERADE) in front of $NAT_A ($NAT_A_IP) and $NAT_B ($NAT_B_IP); control plane $NAT_CP_IP (443 -> 8132)"
}

# sockets NETNS FILTER...: established TCP sockets matching the ss FILTER, with their owners
sockets() { local ns=$1; shift; ip netns exec "$ns" ss -tnpH state established "$@"; }

# check_owned MODE NETNS AGENT WHAT FILTER...: every established socket in NETNS matching
# FILTER (at least one) belongs to the process started as AGENT.
check_owned() {
  local m=$1 ns=$2 agent=$3 what=$4 out
  shift 4
  out=$(sockets "$ns" "$@")
  [ -n "$out" ] || bad "[$m] no established socket $* in $ns"
  ! grep -qv "pid=${PIDS[$agent]}," <<<"$out" ||
    bad "[$m] $what: a socket not owned by $agent (pid ${PIDS[$agent]}): $out"
  ok "[$m] $what, owned by $agent (pid ${PIDS[$agent]}): $(awk '{print $3, "->", $4, $5}' <<<"$out" | tr '\n' ' ')"
}

# check_served_by MODE N: (while a forward to node N's pod is open) the tunnel's dials to
# node N's kubelet are sockets of node N's agent in node N's namespace, and the other
# node's namespace holds no connection to that kubelet.
check_served_by() {
  local m=$1 n=$2 o=a out
  [ "$n" != a ] || o=b
  out=$(ip netns exec "${NAT_NS[$o]}" ss -tnH dst "${NAT_IP[$n]}:10250") # in any state
  [ -z "$out" ] || bad "[$m] konn-nat-$o holds a connection to konn-nat-$n's kubelet: $out"
  check_owned "$m" "${NAT_NS[$n]}" "nat-agent-$n" \
    "konn-nat-$n: the open dials to its kubelet ${NAT_IP[$n]}:10250 (none from konn-nat-$o)" dst "${NAT_IP[$n]}:10250"
}

# nat_agents N: the proxy-server's /status lists N agents
nat_agents() { [ "$(in_cp curl -sf -m 5 http://127.0.0.1:8133/status | grep -o '"agent_id":' | wc -l)" = "$1" ]; }

nat() {
  local m=nat n ns ip out sargs=() aargs=() args=()
  say "── nat: two nodes behind a NAT gateway, agent port 8132 and 443; proxy-server and proxy-agents with deploy/*.yaml's container args"
  nat_topology
  for n in a b; do
    ns=${NAT_NS[$n]} ip=${NAT_IP[$n]}
    cert "kubelet-nat-$n" "system:node:konn-nat-$n" system:nodes serverAuth "DNS:konn-nat-$n,IP:$ip"
    start "kubelet-nat-$n" "$ns" "$TDIR/kubelet-standin" --listen="$ip:10250" \
      --tls-cert-file="$P/kubelet-nat-$n.crt" --tls-private-key-file="$P/kubelet-nat-$n.key" \
      --client-ca-file="$P/ca.crt" --log-text="$LOG_TEXT on konn-nat-$n" --echo-listen=127.0.0.1:7000
  done
  wait_until "kubelet stand-in a" 20 ip netns exec "$NAT_A" curl -sf --cacert "$P/ca.crt" "https://$NAT_A_IP:10250/healthz"
  wait_until "kubelet stand-in b" 20 ip netns exec "$NAT_B" curl -sf --cacert "$P/ca.crt" "https://$NAT_B_IP:10250/healthz"
  for ip in "$NAT_A_IP" "$NAT_B_IP"; do
    ! in_cp curl -s -m 2 -k "https://$ip:10250/healthz" >/dev/null 2>&1 ||
      bad "[$m] the control plane reached $ip:10250 directly"
  done
  ok "[$m] the control plane cannot reach either node's kubelet port ($NAT_A_IP, $NAT_B_IP) directly"

  # (a) Without konnectivity, kube-apiserver cannot reach the nodes.
  start_apiserver Direct
  create_objects
  register_node konn-nat-a "$NAT_A_IP" nat-pod-a
  register_node konn-nat-b "$NAT_B_IP" nat-pod-b
  for n in a b; do
    local t=$SECONDS rc=0
    out=$(kc -n konn-e2e logs "nat-pod-$n" -c app 2>&1) || rc=$?
    [ "$rc" != 0 ] || bad "[$m] egress Direct: kubectl logs nat-pod-$n succeeded: $out"
    grep -Eqi 'network is unreachable|no route to host|i/o timeout|timed out' <<<"$out" ||
      bad "[$m] egress Direct: kubectl logs nat-pod-$n failed (exit $rc) without a timeout/unreachable error: $out"
    ok "[$m] egress Direct: kubectl logs nat-pod-$n (konn-nat-$n) fails in $((SECONDS - t)) s: $out"
  done

  # The manifests' container args, read by kubectl; the agents' ServiceAccount and tokens.
  mapfile -t sargs < <(container_args konnectivity-server-container <"$ROOT/deploy/konnectivity-server-static-pod.yaml")
  mapfile -t aargs < <(container_args konnectivity-agent <"$ROOT/deploy/konnectivity-agent.yaml")
  [ ${#sargs[@]} -ge 10 ] && [ ${#aargs[@]} -ge 8 ] || bad "[$m] deploy/ args not found: server ${sargs[*]}; agent ${aargs[*]}"
  # The static pod's certificate is kube-apiserver's own, its kubeconfig the admin's.
  subst_args sargs --uds-name="$UDS" --cluster-cert="$P/apiserver.crt" --cluster-key="$P/apiserver.key" \
    --kubeconfig="$W/admin.kubeconfig"
  out=$(kc apply -f "$ROOT/deploy/konnectivity-agent.yaml" 2>&1) || bad "[$m] kubectl apply -f deploy/konnectivity-agent.yaml: $out"
  mkdir -p "$W/nat"
  kc -n kube-system create token konnectivity-agent --audience=system:konnectivity-server >"$W/nat/agent-token" ||
    bad "[$m] kubectl create token konnectivity-agent"
  kc -n kube-system create token konnectivity-agent >"$W/nat/api-token" || bad "[$m] kubectl create token konnectivity-agent"
  pod_secrets "$W/nat/secrets" "$W/nat/agent-token" "$W/nat/api-token"
  stop kube-apiserver

  # (b) Through proxy-server (the static pod's args) and one agent per node (the
  # DaemonSet's args): kube-apiserver on deploy/egress-selector-configuration.yaml.
  start_apiserver deploy
  say "deploy/konnectivity-server-static-pod.yaml: proxy-server ${sargs[*]}"
  : >"$L/nat-server.log"
  start nat-server "$CP" "$RBIN/proxy-server" "${sargs[@]}"
  wait_until "proxy-server (static pod args) /healthz" 20 in_cp curl -sf http://127.0.0.1:8134/healthz
  for n in a b; do
    ns=${NAT_NS[$n]} ip=${NAT_IP[$n]}
    args=("${aargs[@]}")
    subst_args args --proxy-server-host="$NAT_CP_IP" "\$(NODE_NAME)=konn-nat-$n" "\$(NODE_IP)=$ip"
    # Node b: the AKS port, the one substitution that is not a path, address or variable.
    [ "$n" = a ] || subst_args args --proxy-server-port=443
    say "deploy/konnectivity-agent.yaml on konn-nat-$n: proxy-agent ${args[*]}"
    start_pod_agent "nat-agent-$n" "$ns" "$W/nat/secrets" "$NAT_CP_IP" "${args[@]}"
  done
  wait_until "both agents connected (proxy-server /status)" 30 nat_agents 2
  ! grep -q "rejected agent" "$L/nat-server.log" || bad "[$m] proxy-server rejected an agent: $(grep -m1 'rejected agent' "$L/nat-server.log")"
  ok "[$m] proxy-server with deploy/konnectivity-server-static-pod.yaml's args (paths substituted) accepts both agents with deploy/konnectivity-agent.yaml's args (token auth, konnectivity-agent ServiceAccount)"
  local lport=17001
  for n in a b; do
    ip=${NAT_IP[$n]}
    check_logs "$m" "nat-pod-$n" "$ip" "kubelet-nat-$n" "$LOG_TEXT on konn-nat-$n"
    check_exec "$m" "nat-pod-$n" "$ip"
    check_port_forward "$m" "nat-pod-$n" "$lport" check_served_by "$m" "$n"
    lport=$((lport + 1))
  done
  # (c) Each agent's tunnel leaves its own node (8132, 443); the server sees both from
  # the gateway's address.
  check_owned "$m" "$NAT_A" nat-agent-a "konn-nat-a: its tunnel to $NAT_CP_IP:8132" dst "$NAT_CP_IP:8132"
  check_owned "$m" "$NAT_B" nat-agent-b "konn-nat-b: its tunnel to $NAT_CP_IP:443" dst "$NAT_CP_IP:443"
  # proxy-server listens on [::]: IPv4 peers show as [::ffff:a.b.c.d].
  out=$(sockets "$CP" sport = :8132)
  [ "$(wc -l <<<"$out")" = 2 ] &&
    [ "$(grep -cE " (\[::ffff:)?${NAT_GW_IP//./\\.}\]?:[0-9]+ .*pid=${PIDS[nat-server]}," <<<"$out")" = 2 ] ||
    bad "[$m] proxy-server's agent connections are not two from $NAT_GW_IP: $out"
  local hosts
  hosts=$(in_cp curl -sf -m 5 http://127.0.0.1:8133/status | grep -o '"hosts":\[[^]]*\]' | tr '\n' ' ')
  grep -qF "konn-nat-a" <<<"$hosts" && grep -qF "$NAT_A_IP" <<<"$hosts" && grep -qF "konn-nat-b" <<<"$hosts" &&
    grep -qF "$NAT_B_IP" <<<"$hosts" || bad "[$m] proxy-server /status does not list both nodes' agents: $hosts"
  # The agents also reach kube-apiserver through the gateway, as pods: in-cluster
  # credentials, KUBERNETES_SERVICE_HOST=$NAT_CP_IP, listing Leases (--count-server-leases).
  local la lb
  la=$(agent_metric 8134 'lease_lists_total{http_response_code="200",reason=""}' "$NAT_A")
  lb=$(agent_metric 8134 'lease_lists_total{http_response_code="200",reason=""}' "$NAT_B")
  [ "${la:-0}" -ge 1 ] && [ "${lb:-0}" -ge 1 ] 2>/dev/null ||
    bad "[$m] the agents' Lease lists through the gateway: lease_lists_total{http_response_code=\"200\"} a '$la', b '$lb'"
  ok "[$m] both agents list Leases through the gateway with in-cluster credentials (lease_lists_total{http_response_code=\"200\"}: a $la, b $lb)"

  # The other egress protocol: the same server args in --mode=http-connect (the last
  # --mode wins, as with pflag) and kube-apiserver's egress `cluster` over HTTPConnect;
  # the agents, untouched, reconnect to the restarted server.
  stop kube-apiserver
  stop nat-server
  : >"$L/nat-server.log"
  start nat-server "$CP" "$RBIN/proxy-server" "${sargs[@]}" --mode=http-connect
  wait_until "proxy-server (static pod args, http-connect) /healthz" 20 in_cp curl -sf http://127.0.0.1:8134/healthz
  # The agents' tokens are reviewed by kube-apiserver (TokenReview): it comes first.
  start_apiserver HTTPConnect
  wait_until "both agents back (proxy-server /status)" 30 nat_agents 2
  create_objects
  register_node konn-nat-a "$NAT_A_IP" nat-pod-a
  register_node konn-nat-b "$NAT_B_IP" nat-pod-b
  for n in a b; do
    ip=${NAT_IP[$n]}
    check_logs "$m/http-connect" "nat-pod-$n" "$ip" "kubelet-nat-$n" "$LOG_TEXT on konn-nat-$n"
    check_exec "$m/http-connect" "nat-pod-$n" "$ip"
  done
  ok "[$m] proxy-server: both agents' connections come from the gateway $NAT_GW_IP ($(awk '{print $4}' <<<"$out" | tr '\n' ' ')); /status agents $hosts"
  stop_now nat-agent-a nat-agent-b
  for n in nat-server kube-apiserver kubelet-nat-a kubelet-nat-b; do stop "$n"; done
}
