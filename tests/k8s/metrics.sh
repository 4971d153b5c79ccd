# shellcheck shell=bash
# Sourced by tests/k8s/run.sh: the aggregated API (issue 20 item 3) — mode `top`.
#
#   control-plane netns              node netns (inbound firewalled)     pod netns
#   kube-apiserver ─UDS─ proxy-server ◀─TLS── proxy-agent ──10.235.1.1──▶ metrics-server
#     aggregator: APIService v1beta1.metrics.k8s.io           kubelet stand-in   10.235.1.2:4443
#     → Service + EndpointSlice → 10.235.1.2:4443             :10250 ◀──scrapes──┘
#   kubectl top ──▶ kube-apiserver ◀── metrics-server's watches (kubeconfig → 10.232.7.1:6443,
#                                      forwarded and masqueraded by the node)
#
# The real metrics-server (sigs.k8s.io/metrics-server, built from the Go module proxy by
# build_metrics_server, module metrics-server/go.mod) runs in a pod network namespace
# behind the node (10.235.1.0/24 on a veth pair, the node routing and masquerading for
# it like a CNI bridge); the control plane has no route there. kube-apiserver reaches it
# only through the tunnel (egress `cluster`, --enable-aggregator-routing: the agent dials
# the pod IP), with its front-proxy client certificate; metrics-server scrapes the
# kubelet stand-in on the node and talks to kube-apiserver directly, as pods can.
#
# Defines: build_metrics_server (build section), front_proxy_pki (PKI section; sets
# FRONT_PROXY_FLAGS for kube-apiserver), top_phase (mode `top`). Uses run.sh's helpers.

# build_metrics_server: metrics-server at the version metrics-server/go.mod pins, into
# $CACHE_ROOT/metrics-server-<version>/ (built once; its own lock, like the k8s build).
build_metrics_server() {
  local v
  v=$(cd "$HERE/metrics-server" && go list -m -f '{{.Version}}' sigs.k8s.io/metrics-server)
  MS_VERSION=$v
  MSDIR=$CACHE_ROOT/metrics-server-$v
  METRICS_SERVER=$MSDIR/metrics-server
  mkdir -p "$MSDIR"
  exec 7>"$MSDIR/.lock"
  flock 7
  if [ ! -x "$METRICS_SERVER" ]; then
    say "building metrics-server $v into $MSDIR (first run only)"
    (cd "$HERE/metrics-server" && gobuild sigs.k8s.io/metrics-server/cmd/metrics-server "$METRICS_SERVER" \
      "-X k8s.io/client-go/pkg/version.gitVersion=$v") || die "building metrics-server $v"
  else
    say "using cached metrics-server $v from $MSDIR"
  fi
  exec 7>&-
}

# front_proxy_pki: the aggregation layer's PKI, as kubeadm lays it out: a front-proxy CA
# (its own, not the cluster CA) and the client certificate kube-apiserver presents to
# extension API servers. FRONT_PROXY_FLAGS are kube-apiserver's flags for it; they are
# given in every mode (harmless where nothing is aggregated).
front_proxy_pki() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=konnectivity-rs k8s e2e front-proxy CA" -keyout "$P/front-proxy-ca.key" -out "$P/front-proxy-ca.crt" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=front-proxy-client" \
    -keyout "$P/front-proxy-client.key" -out "$P/front-proxy-client.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$P/front-proxy-client.ext"
  openssl x509 -req -in "$P/front-proxy-client.csr" -CA "$P/front-proxy-ca.crt" -CAkey "$P/front-proxy-ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 -extfile "$P/front-proxy-client.ext" \
    -out "$P/front-proxy-client.crt" 2>/dev/null
  FRONT_PROXY_FLAGS=(
    --requestheader-client-ca-file="$P/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
    --requestheader-extra-headers-prefix=X-Remote-Extra-
    --proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key"
  )
}

MS_PORT=4443
POD_GW=10.235.1.1 # the node's address on the pod network
POD_IP=10.235.1.2 # metrics-server's pod IP

in_pod() { ip netns exec "$POD_NS" "$@"; }

# pod_netns_up: the pod network namespace $POD_NS behind the node, as a CNI plugin would
# wire it: a veth pair, a default route via the node, the node forwarding and masquerading
# the pod's traffic to the control plane and accepting the pod's connections to itself
# (the kubelet port) — the node's firewall otherwise drops every inbound connection.
pod_netns_up() {
  POD_NS=$TAG-pod
  ip netns add "$POD_NS"
  EXTRA_NS+=("$POD_NS") # cleanup deletes it if the phase fails
  ip link add "msn$$" netns "$NODE" type veth peer name "msp$$" netns "$POD_NS"
  ip -n "$NODE" addr add "$POD_GW/24" dev "msn$$"
  ip -n "$POD_NS" addr add "$POD_IP/24" dev "msp$$"
  ip -n "$NODE" link set "msn$$" up
  ip -n "$POD_NS" link set "msp$$" up
  ip -n "$POD_NS" link set lo up
  ip -n "$POD_NS" route add default via "$POD_GW"
  in_node sysctl -qw net.ipv4.ip_forward=1
  in_node iptables -t nat -A POSTROUTING -s "$POD_IP/32" ! -o "msn$$" -j MASQUERADE
  in_node iptables -I INPUT 1 -i "msn$$" -j ACCEPT
}
pod_netns_down() {
  in_node iptables -D INPUT -i "msn$$" -j ACCEPT 2>/dev/null || true
  in_node iptables -t nat -D POSTROUTING -s "$POD_IP/32" ! -o "msn$$" -j MASQUERADE 2>/dev/null || true
  ip netns del "$POD_NS" 2>/dev/null || true # takes the veth pair with it
}

metrics_objects() {
  yaml_service kube-system metrics-server metrics-server-node "$POD_IP" konn-node "$MS_PORT" "" "{k8s-app: metrics-server}"
  cat <<EOF
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io, labels: {k8s-app: metrics-server}}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  caBundle: $(base64 -w0 "$P/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

# apiservice_condition: "<status> <reason>: <message>" of v1beta1.metrics.k8s.io's Available condition
apiservice_condition() {
  kc get apiservice v1beta1.metrics.k8s.io \
    -o jsonpath='{range .status.conditions[?(@.type=="Available")]}{.status} {.reason}: {.message}{end}' 2>/dev/null
}
apiservice_is() { [[ "$(apiservice_condition)" == "$1"* ]]; }

# top_row KIND [ARGS...]: the one data row of `kubectl top KIND` (no header), or fail
top_row() {
  local k=$1 out
  shift
  out=$(KC_TIMEOUT=30 kc top "$k" --no-headers "$@" 2>&1) || return 1
  [ -n "$out" ] || return 1
  awk '{$1 = $1; print}' <<<"$out" # columns joined by one space, no padding
}
# The stand-in's steady usage (kubelet-standin/resource_metrics.go) against the node's
# capacity patched below (2 cores, 2Gi): 250m of 2 cores is 12%, 512Mi of 2Gi is 25%.
# Earlier phases leave their Nodes and Pods in etcd: every query names its object.
TOP_NODE_WANT="konn-node 250m 12% 512Mi 25%"
TOP_POD_WANT="konn-pod 50m 32Mi"
# wait_top_node DESC SECONDS: until `kubectl top node` shows $TOP_NODE_WANT; bounded, and
# on timeout the last answer is in the failure.
wait_top_node() {
  local desc=$1 end=$((SECONDS + $2)) last
  until last=$(top_row node konn-node 2>&1) && [ "$last" = "$TOP_NODE_WANT" ]; do
    [ "$SECONDS" -lt "$end" ] || bad "[top] timed out after $2 s waiting for $desc; kubectl top node: $last ($(KC_TIMEOUT=30 kc top node konn-node 2>&1 | tr '\n' ' '))"
    sleep 1
  done
}

# top_phase MODE: proxy-server --mode=MODE, kube-apiserver's egress in that protocol.
top_phase() {
  local mode=${1:-grpc} m out t took rc protocol
  case $mode in grpc) protocol=GRPC ;; http-connect) protocol=HTTPConnect ;; esac
  m="top/$mode"
  say "── top, egress 'cluster' = $protocol: metrics-server (aggregated API v1beta1.metrics.k8s.io) in a pod behind the node, reached through the tunnel"
  start_proxy_server "$mode"
  start_agent
  start_apiserver "$protocol"
  create_objects
  kc patch node konn-node --subresource=status --type=merge \
    -p '{"status":{"capacity":{"cpu":"2","memory":"2Gi","pods":"10"},"allocatable":{"cpu":"2","memory":"2Gi","pods":"10"}}}' >/dev/null
  # metrics-server's identity: a client certificate (system:masters; a real deployment
  # binds the system:metrics-server and auth-delegator roles to its ServiceAccount), used
  # for kube-apiserver (from the pod, at the control plane's address) and the kubelet.
  cert metrics-server metrics-server system:masters clientAuth ""
  cert metrics-server-serving metrics-server.kube-system.svc "" serverAuth \
    "DNS:metrics-server,DNS:metrics-server.kube-system,DNS:metrics-server.kube-system.svc,IP:$POD_IP"
  sed "s#https://127.0.0.1:6443#https://$CP_IP:6443#; s#$P/admin\.#$P/metrics-server.#g" "$W/admin.kubeconfig" >"$W/metrics-server.kubeconfig"
  metrics_objects >"$W/metrics-objects.yaml"
  out=$(kc apply -f "$W/metrics-objects.yaml" 2>&1) || bad "[$m] kubectl apply of the metrics-server objects: $out"
  pod_netns_up
  : >"$L/metrics-server.log"
  start metrics-server "$POD_NS" "$METRICS_SERVER" \
    --kubeconfig="$W/metrics-server.kubeconfig" \
    --authentication-kubeconfig="$W/metrics-server.kubeconfig" --authorization-kubeconfig="$W/metrics-server.kubeconfig" \
    --bind-address="$POD_IP" --secure-port="$MS_PORT" --cert-dir="$W/metrics-server-certs" \
    --tls-cert-file="$P/metrics-server-serving.crt" --tls-private-key-file="$P/metrics-server-serving.key" \
    --kubelet-preferred-address-types=InternalIP --kubelet-certificate-authority="$P/ca.crt" \
    --kubelet-client-certificate="$P/metrics-server.crt" --kubelet-client-key="$P/metrics-server.key" \
    --node-selector=kubernetes.io/hostname=konn-node \
    --metric-resolution=10s --kubelet-request-timeout=5s --v=3
  wait_until "metrics-server /livez (from the node)" 60 in_node curl -sf --cacert "$P/ca.crt" "https://$POD_IP:$MS_PORT/livez"
  if in_cp curl -s -m 2 -k "https://$POD_IP:$MS_PORT/livez" >/dev/null 2>&1; then
    bad "[$m] the control plane reached metrics-server at $POD_IP:$MS_PORT directly: the pod is not isolated"
  fi
  ok "[$m] metrics-server $MS_VERSION serves on $POD_IP:$MS_PORT in a pod namespace behind the node (the node reaches it); the control plane cannot reach it directly"

  # The aggregator's availability check goes through the tunnel too.
  t=$SECONDS
  wait_until "APIService v1beta1.metrics.k8s.io Available" 60 apiservice_is "True"
  ok "[$m] APIService v1beta1.metrics.k8s.io (Service kube-system/metrics-server, EndpointSlice -> $POD_IP:$MS_PORT) is Available after $((SECONDS - t)) s: $(apiservice_condition)"

  # CPU is a rate: metrics-server answers after its second scrape (--metric-resolution=10s).
  t=$SECONDS
  wait_top_node "kubectl top node to show the stand-in's usage" 60
  ok "[$m] kubectl top node konn-node (after $((SECONDS - t)) s): $(top_row node konn-node)"
  local seen
  seen=$(grep "GET /metrics/resource" "$L/kubelet.log" | tail -1)
  grep -q "from $POD_IP:[0-9]* (client cert \"metrics-server\")" <<<"$seen" ||
    bad "[$m] the kubelet stand-in saw no /metrics/resource scrape by metrics-server: $seen"
  ok "[$m] kubelet stand-in scraped by metrics-server: ${seen#*: }"
  out=$(top_row pod konn-pod -n konn-e2e) || bad "[$m] kubectl top pod konn-pod: $(kc top pod konn-pod -n konn-e2e 2>&1)"
  [ "$out" = "$TOP_POD_WANT" ] || bad "[$m] kubectl top pod konn-pod shows '$out', want '$TOP_POD_WANT'"
  ok "[$m] kubectl top pod konn-pod -n konn-e2e: $out"
  out=$(top_row pod konn-pod -n konn-e2e --containers) || bad "[$m] kubectl top pod konn-pod --containers failed"
  [ "$out" = "konn-pod app 50m 32Mi" ] || bad "[$m] kubectl top pod konn-pod --containers shows '$out'"
  ok "[$m] kubectl top pod konn-pod --containers: $out"
  # metrics-server logged kube-apiserver's request: it came from the node's address on the
  # pod network (the agent's dial), authenticated by the front-proxy certificate.
  seen=$(grep -E '"HTTP".*URI="/apis/metrics.k8s.io/v1beta1/nodes' "$L/metrics-server.log" | tail -1)
  grep -q "srcIP=\"$POD_GW:[0-9]*\"" <<<"$seen" ||
    bad "[$m] metrics-server did not log kubectl top's request from $POD_GW: $seen"
  ok "[$m] metrics-server served kube-apiserver's request from the agent's address: $(grep -oE 'verb="[A-Z]+" URI="[^"]*"|srcIP="[^"]*"|resp=[0-9]+' <<<"$seen" | tr '\n' ' ')"

  # Agent stopped: kube-apiserver cannot reach metrics-server; kubectl top fails at once
  # with kube-apiserver's 503 for an unreachable extension API server (or, once the
  # availability check has dropped the group from discovery, kubectl's "Metrics API not
  # available"); the APIService turns unavailable with the tunnel's reason.
  stop agent
  wait_until "proxy-server /readyz to report no agent" 20 bash -c "! ip netns exec $CP curl -sf http://$CP_IP:8092/readyz"
  t=$SECONDS rc=0
  out=$(KC_TIMEOUT=60 kc top node konn-node 2>&1) || rc=$?
  took=$((SECONDS - t))
  [ "$rc" != 0 ] || bad "[$m] kubectl top node succeeded with the agent stopped: $out"
  [ "$rc" != 124 ] || bad "[$m] kubectl top node hung with the agent stopped (killed after 60 s)"
  [ "$took" -le 15 ] || bad "[$m] kubectl top node took ${took}s to fail with the agent stopped: $out"
  grep -qE 'the server is currently unable to handle the request|Metrics API not available' <<<"$out" ||
    bad "[$m] kubectl top node with the agent stopped failed (${took}s) without kube-apiserver's 503: $out"
  ok "[$m] agent stopped: kubectl top node fails in ${took}s: $(tr '\n' ' ' <<<"$out")"
  t=$SECONDS
  wait_until "APIService v1beta1.metrics.k8s.io unavailable" 90 apiservice_is "False"
  out=$(apiservice_condition)
  # HTTPConnect: kube-apiserver passes on only the CONNECT status line (see check_agent_down).
  grep -qi 'no agent available' <<<"$out" ||
    { [ "$mode" = http-connect ] && grep -q 'code 500' <<<"$out"; } ||
    bad "[$m] APIService unavailable without the tunnel's reason: $out"
  ok "[$m] agent stopped: APIService Available=False after $((SECONDS - t)) s: $out"

  t=$SECONDS
  start_agent
  wait_top_node "kubectl top node to work after the agent restarted" 90
  ok "[$m] agent restarted: kubectl top node works again $((SECONDS - t)) s after the agent started: $(top_row node konn-node)"
  wait_until "APIService v1beta1.metrics.k8s.io Available again" 90 apiservice_is "True"
  ok "[$m] agent restarted: APIService Available: $(apiservice_condition)"

  stop metrics-server
  pod_netns_down
  stop kube-apiserver
  stop agent
  stop proxy-server
}
