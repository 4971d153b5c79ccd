{{/* Names, labels, and the two argument lists (server and agent) every template shares. */}}

{{- define "konnectivity.labels" -}}
app.kubernetes.io/name: konnectivity
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "konnectivity.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "konnectivity.serverName" -}}
{{ .Release.Name }}-server
{{- end }}

{{- define "konnectivity.agentName" -}}
{{ .Release.Name }}-agent
{{- end }}

{{- define "konnectivity.scrapeAnnotations" -}}
{{- if .Values.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.healthPort | quote }}
{{- end }}
{{- end }}

{{/* proxy-server arguments, one per line, for both server kinds. */}}
{{- define "konnectivity.serverArgs" -}}
{{- $s := .Values.server -}}
{{- if not (has $s.kind (list "sidecar" "deployment")) }}{{ fail "server.kind must be sidecar or deployment" }}{{ end -}}
{{- if not (has $s.mode (list "grpc" "http-connect")) }}{{ fail "server.mode must be grpc or http-connect" }}{{ end -}}
{{- if not (has .Values.auth.mode (list "token" "certificate")) }}{{ fail "auth.mode must be token or certificate" }}{{ end -}}
- --logtostderr=true
- --mode={{ $s.mode }}
{{- if and (eq $s.mode "grpc") (eq $s.kind "sidecar") }}
- --uds-name={{ $s.udsName }}
- --delete-existing-uds-file
- --server-port=0
{{- else }}
- --server-port={{ $s.frontendPort }}
- --server-cert={{ $s.frontendCert }}
- --server-key={{ $s.frontendKey }}
- --server-ca-cert={{ $s.frontendCACert }}
{{- end }}
- --cluster-cert={{ $s.clusterCert }}
- --cluster-key={{ $s.clusterKey }}
{{- if eq .Values.auth.mode "certificate" }}
- --cluster-ca-cert={{ required "auth.mode=certificate needs server.clusterCACert" $s.clusterCACert }}
{{- end }}
- --agent-port={{ .Values.agentPort }}
- --admin-port={{ .Values.adminPort }}
{{- if eq $s.kind "deployment" }}
- --agent-bind-address=0.0.0.0
- --admin-bind-address=0.0.0.0
{{- end }}
- --health-port={{ .Values.healthPort }}
{{- if eq .Values.auth.mode "token" }}
- --agent-namespace={{ .Release.Namespace }}
- --agent-service-account={{ include "konnectivity.agentName" . }}
- --authentication-audience={{ .Values.auth.audience }}
{{- end }}
{{- if or (eq .Values.auth.mode "token") $s.leaseController }}
{{- with $s.kubeconfig }}
- --kubeconfig={{ . }}
{{- end }}
{{- end }}
{{- if $s.leaseController }}
- --enable-lease-controller
- --lease-namespace={{ .Release.Namespace }}
- --lease-label={{ .Values.leaseLabel }}
{{- else }}
- --server-count={{ $s.serverCount }}
{{- end }}
- --proxy-strategies={{ $s.proxyStrategies }}
- --graceful-shutdown-timeout={{ $s.gracefulShutdownTimeout }}
{{- range $s.extraArgs }}
- {{ . }}
{{- end }}
{{- end }}

{{/* proxy-agent arguments, one per line. */}}
{{- define "konnectivity.agentArgs" -}}
{{- $a := .Values.agent -}}
- --logtostderr=true
- --proxy-server-host={{ $a.serverHost }}
- --proxy-server-port={{ .Values.agentPort }}
- --admin-server-port={{ .Values.adminPort }}
- --health-server-port={{ .Values.healthPort }}
{{- if eq .Values.auth.mode "token" }}
- --ca-cert={{ $a.caCert }}
- --service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token
{{- else }}
- --ca-cert=/certs/agent/ca.crt
- --agent-cert=/certs/agent/tls.crt
- --agent-key=/certs/agent/tls.key
{{- end }}
{{- with $a.identifiers }}
- --agent-identifiers={{ . }}
{{- end }}
{{- if $a.podCidrsFromNode }}
- --node-name=$(NODE_NAME)
{{- end }}
{{- range $a.alpnProtos }}
- --alpn-proto={{ . }}
{{- end }}
- --sync-interval={{ $a.syncInterval }}
- --sync-interval-cap={{ $a.syncIntervalCap }}
{{- if $a.countServerLeases }}
- --count-server-leases
- --lease-namespace={{ .Release.Namespace }}
- --lease-label-selector={{ .Values.leaseLabel }}
{{- end }}
{{- range $a.extraArgs }}
- {{ . }}
{{- end }}
{{- end }}

{{/* The proxy-server container (both kinds); ports are host ports in sidecar mode. */}}
{{- define "konnectivity.serverContainer" -}}
- name: konnectivity-server
  image: {{ include "konnectivity.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/proxy-server"]
  args:
    {{- include "konnectivity.serverArgs" . | nindent 4 }}
  ports:
  - {name: agentport, containerPort: {{ .Values.agentPort }}}
  - {name: healthport, containerPort: {{ .Values.healthPort }}}
  - {name: adminport, containerPort: {{ .Values.adminPort }}}
  {{- if not (and (eq .Values.server.mode "grpc") (eq .Values.server.kind "sidecar")) }}
  - {name: frontend, containerPort: {{ .Values.server.frontendPort }}}
  {{- end }}
  livenessProbe:
    httpGet: {path: /healthz, port: {{ .Values.healthPort }}{{ if eq .Values.server.kind "sidecar" }}, host: 127.0.0.1{{ end }}}
    initialDelaySeconds: 10
  {{- if eq .Values.server.kind "deployment" }}
  # Ready once an agent is connected (a sidecar has none: it would hold kube-apiserver's
  # pod unready until the first agent arrives).
  readinessProbe:
    httpGet: {path: /readyz, port: {{ .Values.healthPort }}}
    periodSeconds: 5
  {{- end }}
  {{- with .Values.server.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Who the server is to the API: its ServiceAccount, or the sidecar's kubeconfig user. */}}
{{- define "konnectivity.serverSubject" }}
{{- if eq .Values.server.kind "deployment" }}
- kind: ServiceAccount
  name: {{ include "konnectivity.serverName" . }}
  namespace: {{ .Release.Namespace }}
{{- else }}
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: {{ .Values.server.sidecar.user }}
{{- end }}
{{- end }}
