# The token-leases phase of tests/k8s/run.sh (sourced; uses its helpers and variables).
#
# kube-apiserver on deploy/egress-selector-configuration.yaml; deploy/*.yaml and the chart's
# presets dry-run server-side; two proxy-servers that authenticate agents by
# ServiceAccount token (TokenReview) and publish Leases; container args taken from the
# manifests and run. Entry point: token_leases.

# ─────────────── token authentication, two servers with leases, deploy/ ───────────────
# kubectl apply --dry-run=server of every API-object manifest in deploy/.
check_deploy_manifests() {
  local f out n=0
  for f in "$ROOT"/deploy/*.yaml; do
    if grep -q '^kind: EgressSelectorConfiguration' "$f"; then
      continue # a kube-apiserver file, not an API object: this phase's kube-apiserver runs on it
    fi
    if grep -q '^groups:' "$f"; then
      continue # Prometheus rules (promtool checks them: crates/konnectivity-e2e/tests/ops_rules.rs)
    fi
    out=$(kc apply --dry-run=server -f "$f" 2>&1) || bad "[token-leases] kubectl apply --dry-run=server -f deploy/$(basename "$f"): $out"
    ok "[token-leases] kubectl apply --dry-run=server -f deploy/$(basename "$f"): $(tr '\n' ' ' <<<"$out")"
    n=$((n + 1))
  done
  [ "$n" -ge 3 ] || bad "[token-leases] only $n API-object manifests in deploy/"
  # For real: the ServiceAccounts and RBAC the servers and the agent below run with (the
  # DaemonSet and Deployment stay inert: no kube-controller-manager, no kubelet).
  out=$(kc apply -f "$ROOT/deploy/konnectivity-agent.yaml" -f "$ROOT/deploy/konnectivity-server-deployment.yaml" 2>&1) ||
    bad "[token-leases] kubectl apply deploy/konnectivity-agent.yaml deploy/konnectivity-server-deployment.yaml: $out"
}

# charts/konnectivity, rendered by the real helm for each preset, dry-run server-side
# (release chart-e2e: no name clashes with the deploy/ objects applied above).
check_chart() {
  local helm preset out
  helm=$(bash "$ROOT/tests/tools/build.sh" helm) || bad "[token-leases] tests/tools/build.sh helm failed"
  for preset in kubeadm k0s aks; do
    out=$("$helm" template chart-e2e "$ROOT/charts/konnectivity" --namespace kube-system \
      -f "$ROOT/charts/konnectivity/presets/$preset.yaml" | kc apply --dry-run=server -f - 2>&1) ||
      bad "[token-leases] helm template charts/konnectivity -f presets/$preset.yaml | kubectl apply --dry-run=server: $out"
    ok "[token-leases] chart preset $preset dry-run server-side: $(tr '\n' ' ' <<<"$out")"
  done
}

# The CLI as a kubectl plugin: the real kubectl finds kubectl-konnectivity on $PATH.
check_kubectl_plugin() {
  local d out
  d=$W/plugin-bin
  mkdir -p "$d"
  ln -sf "$RBIN/konnectivity" "$d/kubectl-konnectivity"
  ln -sf "$RBIN/konnectivity" "$d/kubectl_complete-konnectivity"
  out=$(PATH="$d:$PATH" "$KUBECTL" plugin list 2>&1) || true
  grep -q "$d/kubectl-konnectivity" <<<"$out" || bad "[token-leases] kubectl plugin list does not find kubectl-konnectivity: $out"
  out=$(PATH="$d:$PATH" "$KUBECTL" konnectivity doctor --help 2>&1) ||
    bad "[token-leases] kubectl konnectivity doctor --help: $out"
  grep -q 'Usage: kubectl konnectivity doctor' <<<"$out" || bad "[token-leases] kubectl konnectivity doctor --help: $out"
  ok "[token-leases] kubectl konnectivity (plugin on \$PATH): $(grep -m1 'Usage:' <<<"$out")"
  # kubectl's own completion of the plugin's words, through kubectl_complete-konnectivity.
  out=$(PATH="$d:$PATH" "$KUBECTL" __complete konnectivity doctor "" 2>/dev/null) || true
  grep -qx server <<<"$out" && grep -qx agent <<<"$out" ||
    bad "[token-leases] kubectl __complete konnectivity doctor '' offers no server/agent: $out"
  ok "[token-leases] kubectl completes 'kubectl konnectivity doctor <TAB>': $(tr '\n' ' ' <<<"$out")"
}

# token_kubeconfig FILE APISERVER_URL TOKEN_FILE
token_kubeconfig() {
  cat >"$1" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$2", certificate-authority: "$P/ca.crt"}
users:
- name: sa
  user: {token: "$(cat "$3")"}
contexts:
- name: e2e
  context: {cluster: e2e, user: sa}
current-context: e2e
EOK
}

# start_token_server NAME ID AGENT_IP UDS HEALTH_PORT ADMIN_PORT KUBECONFIG: token authentication of
# agents (TokenReview), lease controller; no --cluster-ca-cert (upstream forbids both).
start_token_server() {
  local n=$1 id=$2 ip=$3 uds=$4 hp=$5 ap=$6 kcfg=$7
  : >"$L/$n.log"
  start "$n" "$CP" "$RBIN/proxy-server" --mode=grpc --uds-name="$uds" --server-port=0 \
    --cluster-cert="$P/proxy-server.crt" --cluster-key="$P/proxy-server.key" \
    --agent-port=8091 --agent-bind-address="$ip" --health-port="$hp" --health-bind-address="$ip" \
    --admin-port="$ap" --admin-bind-address=127.0.0.1 --server-id="$id" \
    --agent-namespace=kube-system --agent-service-account=konnectivity-agent \
    --authentication-audience=system:konnectivity-server \
    --enable-lease-controller --kubeconfig="$kcfg"
  wait_until "$n /healthz" 20 in_cp curl -sf "http://$ip:$hp/healthz"
}

# start_token_agent NAME AGENT_ID TOKEN_FILE HEALTH_PORT ADMIN_PORT HOSTS [FLAGS...]
start_token_agent() {
  local n=$1 id=$2 tok=$3 hp=$4 ap=$5 hosts=$6
  shift 6
  : >"$L/$n.log"
  start "$n" "$NODE" "$RBIN/proxy-agent" --proxy-server-host="$hosts" --proxy-server-port=8091 \
    --ca-cert="$P/ca.crt" --service-account-token-path="$tok" \
    --agent-id="$id" --agent-identifiers="host=konn-node&ipv4=$NODE_IP" \
    --health-server-port="$hp" --admin-server-port="$ap" --sync-interval=200ms --sync-interval-cap=1s \
    --drain-timeout=1s "$@"
}

# agent_metric HEALTH_PORT NAME [NETNS]: the agent's konnectivity_network_proxy_agent_NAME
# (the agent in NETNS, default the node's)
agent_metric() {
  ip netns exec "${3:-$NODE}" curl -sf -m 5 "http://127.0.0.1:$1/metrics" |
    awk -v n="konnectivity_network_proxy_agent_$2" '$1 == n {print $2}'
}
agent_metrics_are() { # HEALTH_PORT OPEN KNOWN
  [ "$(agent_metric "$1" open_server_connections)" = "$2" ] && [ "$(agent_metric "$1" known_server_count)" = "$3" ]
}
server_leases() {
  kc -n kube-system get leases -l k8s-app=konnectivity-server -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}'
}
server_lease_lists() {
  in_cp curl -sf -m 5 "http://$CP_IP:8092/metrics" |
    awk '$1 == "konnectivity_network_proxy_server_lease_list_total{http_status_code=\"200\",reason=\"\"}" {print $2}'
}
server_lease_lists_at_least() { local n; n=$(server_lease_lists); [ "${n:-0}" -ge "$1" ] 2>/dev/null; }
leases_are() { [ "$(server_leases)" = "$*" ] || [ "$(server_leases)" = "$* " ]; }

# check_wrong_token NAME AGENT_ID TOKEN_FILE HEALTH_PORT ADMIN_PORT WHAT: the server refuses it.
check_wrong_token() {
  local n=$1 id=$2 tok=$3 hp=$4 ap=$5 what=$6 line code
  start_token_agent "$n" "$id" "$tok" "$hp" "$ap" "$CP_IP"
  wait_until "proxy-server to reject agent $id" 30 \
    grep -q "rejected agent: authentication failed.*agent_id=$id" "$L/proxy-server.log"
  line=$(grep "rejected agent: authentication failed.*agent_id=$id" "$L/proxy-server.log" | tail -1)
  code=$(in_node curl -s -o /dev/null -w '%{http_code}' -m 5 "http://127.0.0.1:$hp/readyz" || true)
  [ "$code" = 503 ] || bad "[token-leases] agent with $what: /readyz answers $code, want 503"
  [ "$(agent_metric "$hp" open_server_connections)" = 0 ] || bad "[token-leases] agent with $what holds a server connection"
  ! grep -qF "$(cat "$tok")" "$L/proxy-server.log" || bad "[token-leases] proxy-server logged the token"
  ok "[token-leases] agent with $what is rejected (its /readyz 503): ${line#*rejected agent: }"
  stop "$n"
}

# `konnectivity doctor agent` with the token agent's flags: both servers accept it; with
# another ServiceAccount's token the connect finding carries the server's reason.
check_doctor_tokens() {
  local m=token-leases out rc=0 f
  out=$(in_node timeout 60 "$RBIN/konnectivity" doctor agent --timeout=3s -- \
    --proxy-server-host="$CP_IP,$CP_IP2" --proxy-server-port=8091 --ca-cert="$P/ca.crt" \
    --service-account-token-path="$T/agent" --agent-id=konn-node-doctor \
    --agent-identifiers="host=konn-node&ipv4=$NODE_IP" --count-server-leases --kubeconfig="$W/agent.kubeconfig" 2>&1) || rc=$?
  [ "$rc" = 0 ] && [ -n "$(finding ok connect "$CP_IP:8091" "$out")" ] && [ -n "$(finding ok connect "$CP_IP2:8091" "$out")" ] ||
    bad "[$m] konnectivity doctor agent with the agent's token (exit $rc): $out"
  ok "[$m] konnectivity doctor agent with the agent's token: $(tail -1 <<<"$out"); $(finding ok token "$T/agent" "$out")"
  rc=0
  out=$(in_node timeout 60 "$RBIN/konnectivity" doctor agent --timeout=3s -- \
    --proxy-server-host="$CP_IP" --proxy-server-port=8091 --ca-cert="$P/ca.crt" \
    --service-account-token-path="$T/other-sa" --agent-id=konn-node-doctor \
    --agent-identifiers="host=konn-node&ipv4=$NODE_IP" 2>&1) || rc=$?
  f=$(finding '[a-z ]+' connect "$CP_IP:8091" "$out")
  [ "$rc" = 1 ] && ! grep -q '^ok ' <<<"$f" && grep -qF 'Expected "konnectivity-agent"' <<<"$f" ||
    bad "[$m] konnectivity doctor agent with another ServiceAccount's token (exit $rc): $out"
  ok "[$m] konnectivity doctor agent with another ServiceAccount's token exits 1: ${f%% — *}"
}

# ─────────────── container args from manifests (deploy/, the chart) ───────────────
# kubectl_local JSONPATH: the manifests on stdin, parsed by kubectl offline (`label
# --local` prints each object as read, plus a label), each printed with JSONPATH.
kubectl_local() {
  "$KUBECTL" label --local -f - --kubeconfig=/dev/null konnectivity-e2e=read -o jsonpath="$1"
}

# container_args CONTAINER: the args of the containers named CONTAINER in the manifests on
# stdin, one per line, as kubectl's YAML parser reads them (comments, quoting and flow
# style are its business, not this script's).
container_args() {
  kubectl_local '{range ..containers[?(@.name=="'"$1"'")].args[*]}{@}{"\n"}{end}'
}

# sidecar_pod: the chart's server-sidecar ConfigMap (stdin) as a Pod whose containers are
# its `containers.yaml` (what a control-plane node adds to kube-apiserver's static pod).
sidecar_pod() {
  local c
  c=$(kubectl_local '{.data.containers\.yaml}')
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: sidecar}\nspec:\n  containers:\n'
  sed 's/^/  /' <<<"$c"
}

# subst_args ARRAY SUBST...: in the args read from a manifest, each `--flag=value` SUBST
# replaces that flag's value, each `$(VAR)=value` SUBST expands that downward-API variable
# (as the kubelet would). A SUBST that matches nothing fails the run: the manifest changed.
subst_args() {
  local -n _args=$1
  shift
  local s i hit
  for s in "$@"; do
    hit=0
    for i in "${!_args[@]}"; do
      if [[ $s == '$('* ]]; then
        [[ ${_args[$i]} != *"${s%%=*}"* ]] || { _args[$i]=${_args[$i]//"${s%%=*}"/${s#*=}}; hit=1; }
      elif [ "${_args[$i]%%=*}" = "${s%%=*}" ]; then
        _args[$i]=$s
        hit=1
      fi
    done
    [ "$hit" = 1 ] || bad "no ${s%%=*} in the manifest's args (${_args[*]})"
  done
}

# pod_secrets DIR AGENT_TOKEN API_TOKEN: what a kubelet mounts under /var/run/secrets for
# the agent DaemonSet's pods: the projected token for our audience (tokens/, the
# manifests' volume) and the ServiceAccount's in-cluster credentials.
pod_secrets() {
  local d=$1
  mkdir -p "$d/tokens" "$d/kubernetes.io/serviceaccount"
  cp "$2" "$d/tokens/konnectivity-agent-token"
  cp "$3" "$d/kubernetes.io/serviceaccount/token"
  cp "$P/ca.crt" "$d/kubernetes.io/serviceaccount/ca.crt"
  echo kube-system >"$d/kubernetes.io/serviceaccount/namespace"
}

# start_pod_agent NAME NETNS SECRETS APISERVER_IP ARGS...: proxy-agent with ARGS in a
# private mount namespace where SECRETS (pod_secrets) is /var/run/secrets and
# KUBERNETES_SERVICE_HOST is APISERVER_IP, as in a pod: the manifests' paths hold as written.
start_pod_agent() {
  local n=$1 ns=$2 secrets=$3 host=$4
  shift 4
  : >"$L/$n.log"
  start "$n" "$ns" unshare --mount --propagation private sh -c \
    "mount -t tmpfs tmpfs /run && cp -r '$secrets' /run/secrets && export KUBERNETES_SERVICE_HOST=$host KUBERNETES_SERVICE_PORT=6443 && exec \"\$0\" \"\$@\"" \
    "$RBIN/proxy-agent" "$@"
}

# The kubeadm preset's server and agent arguments, exactly as the chart renders them,
# run by our binaries against this kube-apiserver, with the chart's objects applied for
# real (release chart-e2e: the agent's ServiceAccount, RBAC for the sidecar's user
# system:konnectivity-server). Only the server's paths and the agent's server host are
# substituted (and $(NODE_NAME)/$(NODE_IP), as the kubelet would); the agent runs as in a
# pod (start_pod_agent: its token, CA and in-cluster credentials where the chart mounts
# them). The agent's token is reviewed and accepted, it counts the server's Lease, and
# kubectl logs goes through the rendered server (on the socket kube-apiserver's egress
# selector names).
check_chart_args() {
  local m=token-leases helm out sargs=() aargs=()
  helm=$(bash "$ROOT/tests/tools/build.sh" helm) || bad "[$m] tests/tools/build.sh helm failed"
  local render=("$helm" template chart-e2e "$ROOT/charts/konnectivity" --namespace kube-system
    -f "$ROOT/charts/konnectivity/presets/kubeadm.yaml")
  out=$("${render[@]}" | kc apply -f - 2>&1) || bad "[$m] kubectl apply of the chart (kubeadm preset): $out"
  cert chart-server system:konnectivity-server "" clientAuth ""
  # admin.kubeconfig with the sidecar user's client certificate.
  sed "s#$P/admin\.#$P/chart-server.#g; s#name: admin#name: konnectivity-server#; s#user: admin#user: konnectivity-server#" \
    "$W/admin.kubeconfig" >"$W/chart-server.kubeconfig"
  kc -n kube-system create token chart-e2e-agent --audience=system:konnectivity-server >"$T/chart-agent" ||
    bad "[$m] kubectl create token chart-e2e-agent"
  kc -n kube-system create token chart-e2e-agent >"$T/chart-agent-api" || bad "[$m] kubectl create token chart-e2e-agent"
  pod_secrets "$W/chart-secrets" "$T/chart-agent" "$T/chart-agent-api"
  mapfile -t sargs < <("${render[@]}" --show-only templates/server-sidecar.yaml | sidecar_pod | container_args konnectivity-server)
  mapfile -t aargs < <("${render[@]}" --show-only templates/agent.yaml | container_args konnectivity-agent)
  [ ${#sargs[@]} -ge 10 ] && [ ${#aargs[@]} -ge 8 ] || bad "[$m] rendered args not found: server ${sargs[*]}; agent ${aargs[*]}"
  subst_args sargs --uds-name="$UDS" --cluster-cert="$P/proxy-server.crt" --cluster-key="$P/proxy-server.key" \
    --kubeconfig="$W/chart-server.kubeconfig"
  subst_args aargs --proxy-server-host="$CP_IP" '$(NODE_NAME)=konn-node' '$(NODE_IP)='"$NODE_IP"
  say "chart (kubeadm) proxy-server ${sargs[*]}"
  say "chart (kubeadm) proxy-agent ${aargs[*]}"
  : >"$L/chart-server.log"
  start chart-server "$CP" "$RBIN/proxy-server" "${sargs[@]}"
  wait_until "the chart's proxy-server /healthz" 20 in_cp curl -sf "http://$CP_IP:8134/healthz"
  start_pod_agent chart-agent "$NODE" "$W/chart-secrets" "$CP_IP" "${aargs[@]}"
  wait_until "the chart's agent accepted (server /readyz)" 30 in_cp curl -sf "http://$CP_IP:8134/readyz"
  wait_until "the chart's agent counting 1 Lease, connected to it" 40 agent_metrics_are 8134 1 1
  ok "[$m] the kubeadm preset's rendered args (chart applied: ServiceAccount chart-e2e-agent, RBAC for user system:konnectivity-server): token accepted, Lease $(server_leases)counted, agent open_server_connections 1, known_server_count 1"
  check_logs "$m"
  ok "[$m] kubectl logs goes through the proxy-server run with the chart's rendered args"
  stop_now chart-agent # rendered without --drain-timeout: it would drain until stop's KILL
  stop chart-server
}

token_leases() {
  local m=token-leases out
  say "── token-leases: agent ServiceAccount tokens (TokenReview), two proxy-servers with the lease controller, deploy/ manifests"
  start_apiserver deploy
  create_objects
  check_deploy_manifests
  check_chart
  if [ "$DOCTOR" = 1 ]; then check_kubectl_plugin; fi
  T=$W/tokens # also read by check_doctor_tokens
  mkdir -p "$T"
  kc -n kube-system create token konnectivity-agent --audience=system:konnectivity-server >"$T/agent" ||
    bad "[$m] kubectl create token konnectivity-agent"
  # Tokens for kube-apiserver's own audience; and another ServiceAccount's for ours.
  kc -n kube-system create token konnectivity-agent >"$T/agent-api" || bad "[$m] kubectl create token konnectivity-agent"
  kc -n kube-system create token konnectivity-server >"$T/server-api" || bad "[$m] kubectl create token konnectivity-server"
  kc -n kube-system create token default --audience=system:konnectivity-server >"$T/other-sa" ||
    bad "[$m] kubectl create token default"
  # Server a like deploy/konnectivity-server-static-pod.yaml (an admin kubeconfig); server b
  # like deploy/konnectivity-server-deployment.yaml (its ServiceAccount and RBAC).
  token_kubeconfig "$W/server-b.kubeconfig" https://127.0.0.1:6443 "$T/server-api"
  # The agent lists Leases as its ServiceAccount (deploy/konnectivity-agent.yaml's Role),
  # from the node namespace, through kube-apiserver's control-plane address.
  token_kubeconfig "$W/agent.kubeconfig" "https://$CP_IP:6443" "$T/agent-api"

  start_token_server proxy-server e2e-server-a "$CP_IP" "$UDS" 8092 8095 "$W/admin.kubeconfig"
  start_token_server proxy-server-b e2e-server-b "$CP_IP2" "$W/konnectivity-server-b.socket" 8192 8195 "$W/server-b.kubeconfig"
  local want="konnectivity-proxy-server-e2e-server-a konnectivity-proxy-server-e2e-server-b"
  wait_until "both servers' Leases" 30 leases_are "$want"
  ok "[$m] both proxy-servers publish Leases in kube-system (label k8s-app=konnectivity-server): $(server_leases)"
  # The garbage collector's list calls show in server a's metrics, answered 200.
  wait_until "server a's lease_list_total" 30 server_lease_lists_at_least 1
  ok "[$m] proxy-server metrics: lease_list_total{http_status_code=\"200\",reason=\"\"} $(server_lease_lists), culled_leases_count $(in_cp curl -sf -m 5 "http://$CP_IP:8092/metrics" | awk '$1 == "konnectivity_network_proxy_server_culled_leases_count" {print $2}')"

  start_token_agent agent konn-node "$T/agent" 8093 8094 "$CP_IP,$CP_IP2" \
    --count-server-leases --kubeconfig="$W/agent.kubeconfig"
  wait_until "proxy-server /readyz (token-authenticated agent)" 30 in_cp curl -sf "http://$CP_IP:8092/readyz"
  ! grep -q "rejected agent.*agent_id=konn-node " "$L/proxy-server.log" || bad "[$m] proxy-server rejected the agent's own token"
  ok "[$m] the agent with its ServiceAccount token (audience system:konnectivity-server) is accepted: $(grep -m1 -o 'agent connected agent_id=konn-node .*' "$L/proxy-server.log")"
  check_logs "$m"
  ok "[$m] kube-apiserver runs on deploy/egress-selector-configuration.yaml (only udsName changed) and sends 'cluster' traffic (kubectl logs) through proxy-server"
  wait_until "the agent connected to both servers" 30 agent_metrics_are 8093 2 2
  in_cp curl -sf "http://$CP_IP2:8192/readyz" >/dev/null || bad "[$m] server b has no agent"
  ok "[$m] agent (--count-server-leases, --proxy-server-host=$CP_IP,$CP_IP2): open_server_connections 2, known_server_count 2"

  if [ "$DOCTOR" = 1 ]; then check_doctor_tokens; fi
  check_wrong_token agent-wrong-audience konn-wrong-audience "$T/agent-api" 8183 8184 \
    "its ServiceAccount's token for kube-apiserver's audience"
  check_wrong_token agent-wrong-sa konn-wrong-sa "$T/other-sa" 8173 8174 \
    "another ServiceAccount's token (kube-system/default)"

  # A server that stops deletes its Lease; the agent then counts one server.
  stop proxy-server-b
  wait_until "server b's Lease to go" 30 leases_are konnectivity-proxy-server-e2e-server-a
  wait_until "the agent to count one server" 30 agent_metrics_are 8093 1 1
  ok "[$m] server b stopped: its Lease is deleted, the agent counts and holds 1 server"
  # Recounting took at least two list calls, each answered 200 by kube-apiserver.
  local lists
  lists=$(agent_metric 8093 'lease_lists_total{http_response_code="200",reason=""}')
  [ "${lists:-0}" -ge 2 ] 2>/dev/null || bad "[$m] agent lease_lists_total{http_response_code=\"200\"} is '$lists', want at least 2"
  [ "$(agent_metric 8093 'lease_list_latency_seconds_count{http_response_code="200"}')" = "$lists" ] ||
    bad "[$m] agent lease_list_latency_seconds_count differs from lease_lists_total"
  ok "[$m] agent metrics: lease_lists_total{http_response_code=\"200\",reason=\"\"} $lists, with as many latency observations"
  check_logs "$m"

  stop agent
  stop proxy-server
  check_chart_args
  stop kube-apiserver
}
