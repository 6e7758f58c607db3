{{/* Names, labels and shared pieces of the arcly chart. */}}
{{- define "arcly.name" -}}{{ .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}

{{- define "arcly.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "arcly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "arcly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: arcly
{{- end -}}

{{- define "arcly.selector" -}}
app.kubernetes.io/name: {{ include "arcly.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "arcly.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     Values that must hold together: a clear message instead of a broken install. */}}
{{- define "arcly.validate" -}}
{{- if and (not .Values.redis.bundled) (not .Values.redis.externalUrl) (not .Values.redis.existingSecret) -}}
{{- fail "redis.externalUrl (or redis.existingSecret, a Secret with key url) is required when redis.bundled is false" -}}
{{- end -}}
{{- if and .Values.relay.tls.enabled (not .Values.relay.tls.existingSecret) -}}
{{- fail "relay.tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt) is required when relay.tls.enabled is true" -}}
{{- end -}}
{{- if and .Values.edge.ingress.enabled (not .Values.edge.ingress.hosts) -}}
{{- fail "edge.ingress.hosts needs at least one host when edge.ingress.enabled is true" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- if and .Values.edge.keda.enabled (not .Values.edge.keda.query) (not .Values.metrics.serviceMonitor.enabled) -}}
{{- fail "edge.keda.enabled queries series labelled by the ServiceMonitor: enable metrics.serviceMonitor.enabled or give edge.keda.query" -}}
{{- end -}}
{{- $w := .Values.webrtc -}}
{{- if $w.enabled -}}
{{- $ports := include "arcly.webrtcPorts" . | fromJson -}}
{{- if not (and (le 1024 (int $ports.low)) (le (int $ports.low) (int $ports.high)) (le (int $ports.high) 65535)) -}}
{{- fail (printf "webrtc.udpPorts %q must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535" $w.udpPorts) -}}
{{- end -}}
{{- $count := add 1 (sub (int $ports.high) (int $ports.low)) -}}
{{- if and (eq $w.expose "hostPort") (gt $count 500) -}}
{{- fail (printf "webrtc.udpPorts %q is %d ports: with webrtc.expose=hostPort each is a hostPort of every origin and edge Pod (at most 500); narrow the range or use webrtc.expose=hostNetwork" $w.udpPorts $count) -}}
{{- end -}}
{{- if and $w.iceServers $w.iceServersSecret -}}
{{- fail "webrtc.iceServers and webrtc.iceServersSecret both set: give one (the Secret's key ice-servers holds the whole comma-separated list)" -}}
{{- end -}}
{{- range $w.iceServers -}}
{{- if contains "@" . -}}
{{- fail (printf "webrtc.iceServers: %q carries credentials, which would stand in the Pod spec in plain text; put the list in a Secret (key ice-servers) and name it in webrtc.iceServersSecret" (regexReplaceAll ":[^:@]*@" . ":***@")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.srt.enabled .Values.srt.passphrase .Values.srt.passphraseSecret -}}
{{- fail "srt.passphrase and srt.passphraseSecret both set: give one (the Secret's key srt-passphrase holds the passphrase)" -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     Secrets. The chart's own Secret holds what it generates (once; kept across upgrades by
     lookup) and what values give; an existing Secret named in values replaces a key. */}}
{{- define "arcly.secretName" -}}{{ include "arcly.fullname" . }}-secrets{{- end -}}

{{- define "arcly.authEnabled" -}}{{ if or .Values.auth.config .Values.auth.existingSecret }}true{{ end }}{{- end -}}

{{- define "arcly.redisPasswordSet" -}}{{ if or .Values.redis.bundled .Values.redis.password .Values.redis.existingPasswordSecret }}true{{ end }}{{- end -}}

{{/* A secretKeyRef: (dict "root" . "existing" NAME "existingKey" K "key" CHART_KEY) */}}
{{- define "arcly.secretRef" -}}
{{- if .existing -}}
{name: {{ .existing }}, key: {{ .existingKey }}}
{{- else -}}
{name: {{ include "arcly.secretName" .root }}, key: {{ .key }}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     Environment. Nodes get the relay and API tokens and the token secret; the operator only
     what it uses (the registry, its lease, its metrics). Secrets only by secretKeyRef. */}}
{{- define "arcly.registryEnv" -}}
{{- if .Values.redis.bundled }}
- name: ARCLY_REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "arcly.fullname" .) | quote }}
{{- else }}
- name: ARCLY_REDIS_URL
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" . "existing" .Values.redis.existingSecret "existingKey" "url" "key" "redis-url") }}}
{{- end }}
{{- if include "arcly.redisPasswordSet" . }}
- name: ARCLY_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" . "existing" .Values.redis.existingPasswordSecret "existingKey" "password" "key" "redis-password") }}}
{{- end }}
- name: ARCLY_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
{{- end -}}

{{- define "arcly.otelEnv" -}}
{{- if .Values.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerArg | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
{{- end }}
{{- end -}}

{{- define "arcly.podEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{- define "arcly.nodeEnv" -}}
{{ include "arcly.podEnv" .root }}
- name: ARCLY_RELAY_TOKEN
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" .root "existing" .root.Values.relay.existingSecret "existingKey" "token" "key" "relay-token") }}}
- name: ARCLY_API_TOKEN
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" .root "existing" .root.Values.api.existingSecret "existingKey" "token" "key" "api-token") }}}
{{- if include "arcly.authEnabled" .root }}
- name: ARCLY_TOKEN_SECRET
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" .root "existing" .root.Values.auth.existingTokenSecret "existingKey" "token-secret" "key" "token-secret") }}}
{{- end }}
{{- include "arcly.registryEnv" .root }}
- name: ARCLY_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: ARCLY_LOG_JSON
  value: {{ .root.Values.logJson | quote }}
- name: ARCLY_METRICS
  value: {{ .root.Values.metrics.enabled | quote }}
{{- include "arcly.otelEnv" .root }}
{{- include "arcly.webrtcEnv" .root }}
{{- include "arcly.srtEnv" .root }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     Node Pods: args, volumes, probes and the drain. */}}
{{- define "arcly.nodeArgs" -}}
{{- $v := .root.Values -}}
- --idle-timeout={{ $v.operator.idleTimeout }}
- --drain-timeout={{ .values.drainTimeout }}
{{- if $v.hls.enabled }}
- --hls-variant={{ $v.hls.variant }}
- --hls-part-ms={{ $v.hls.partMs }}
- --hls-segment-seconds={{ $v.hls.segmentSeconds }}
- --hls-window={{ $v.hls.window }}
{{- else }}
- --no-hls
{{- end }}
{{- if $v.metrics.enabled }}
- --metrics-listen=0.0.0.0:{{ $v.metrics.port }}
{{- else }}
- --no-metrics
{{- end }}
{{- if $v.webrtc.enabled }}
- --webrtc-udp-ports={{ $v.webrtc.udpPorts }}
- --webrtc-consent-timeout={{ $v.webrtc.consentTimeout }}
{{- else }}
- --no-webrtc
{{- end }}
{{- if $v.srt.enabled }}
- --srt-listen=0.0.0.0:{{ $v.srt.port }}
- --srt-latency-ms={{ $v.srt.latencyMs }}
{{- else }}
- --srt-listen=off
{{- end }}
{{- if .root.Values.config }}
- --config=/etc/arcly/config/arcly.toml
{{- end }}
{{- if include "arcly.authEnabled" .root }}
- --auth-config=/etc/arcly/auth/auth.toml
{{- end }}
{{- if $v.relay.tls.enabled }}
{{- if or (eq .component "origin") $v.relay.tls.mutual }}
- --relay-tls-cert=/etc/arcly/relay-tls/tls.crt
- --relay-tls-key=/etc/arcly/relay-tls/tls.key
{{- end }}
{{- if or (eq .component "edge") $v.relay.tls.mutual }}
- --relay-tls-ca=/etc/arcly/relay-tls/ca.crt
{{- end }}
{{- end }}
{{- range .values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "arcly.nodeMounts" -}}
- {name: tmp, mountPath: /tmp}
{{- if .root.Values.config }}
- {name: config, mountPath: /etc/arcly/config, readOnly: true}
{{- end }}
{{- if include "arcly.authEnabled" .root }}
- {name: auth, mountPath: /etc/arcly/auth, readOnly: true}
{{- end }}
{{- if .root.Values.relay.tls.enabled }}
- {name: relay-tls, mountPath: /etc/arcly/relay-tls, readOnly: true}
{{- end }}
{{- with .values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "arcly.nodeVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .root.Values.config }}
- name: config  # a directory mount (not subPath): kubelet swaps it in place on change
  configMap:
    name: {{ include "arcly.fullname" .root }}-config
{{- end }}
{{- if include "arcly.authEnabled" .root }}
- name: auth
  secret:
    secretName: {{ .root.Values.auth.existingSecret | default (printf "%s-auth" (include "arcly.fullname" .root)) }}
    items: [{key: auth.toml, path: auth.toml}]
{{- end }}
{{- $tls := .root.Values.relay.tls }}
{{- if $tls.enabled }}
- name: relay-tls
  secret:
    {{- if eq .component "origin" }}
    secretName: {{ $tls.existingSecret }}
    {{- else if $tls.mutual }}
    secretName: {{ $tls.edgeSecret | default $tls.existingSecret }}
    {{- else }}
    secretName: {{ $tls.existingSecret }}
    items: [{key: ca.crt, path: ca.crt}]   # edges verify origins; they never see their key
    {{- end }}
{{- end }}
{{- with .values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     WebRTC. A session's UDP must reach the very Pod that answered its HTTP POST (its ICE
     candidates name that Pod's address and port), so no Service sits in front of it: each Pod
     exposes the range itself (webrtc.expose), and candidates carry the address that reaches it. */}}

{{/* webrtc.udpPorts as JSON {"low": L, "high": H} (the schema has checked the LOW-HIGH form). */}}
{{- define "arcly.webrtcPorts" -}}
{{- $parts := splitList "-" .Values.webrtc.udpPorts -}}
{{- dict "low" (first $parts | atoi) "high" (last $parts | atoi) | toJson -}}
{{- end -}}

{{- define "arcly.webrtcEnv" -}}
{{- $w := .Values.webrtc -}}
{{- if $w.enabled }}
- name: ARCLY_WEBRTC_ADVERTISE_IP
{{- if $w.advertiseIp }}
  value: {{ $w.advertiseIp | quote }}
{{- else }}
  # hostPort/hostNetwork: clients reach the Kubernetes node; none: only the Pod network
  valueFrom: {fieldRef: {fieldPath: {{ ternary "status.podIP" "status.hostIP" (eq $w.expose "none") }}}}
{{- end }}
{{- if $w.iceServersSecret }}
- name: ARCLY_ICE_SERVERS
  valueFrom: {secretKeyRef: {name: {{ $w.iceServersSecret }}, key: ice-servers}}
{{- else if $w.iceServers }}
- name: ARCLY_ICE_SERVERS
  value: {{ join "," $w.iceServers | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* expose=hostPort: every port of the range, UDP, on the node's address too. */}}
{{- define "arcly.webrtcHostPorts" -}}
{{- $w := .Values.webrtc -}}
{{- if and $w.enabled (eq $w.expose "hostPort") -}}
{{- $ports := include "arcly.webrtcPorts" . | fromJson -}}
{{- range $port := untilStep (int $ports.low) (int (add1 $ports.high)) 1 }}
- {name: webrtc-{{ $port }}, containerPort: {{ $port }}, hostPort: {{ $port }}, protocol: UDP}
{{- end }}
{{- end -}}
{{- end -}}

{{/* expose=hostNetwork: the Pod lives in the node's network namespace (and still resolves
     cluster names). */}}
{{- define "arcly.webrtcHostNetwork" -}}
{{- if and .Values.webrtc.enabled (eq .Values.webrtc.expose "hostNetwork") -}}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
     SRT. Unlike WebRTC's, an SRT connection is one UDP flow that kube-proxy's conntrack keeps
     on one Pod, so the ingest (publishers) and edge (viewers) Services carry it. */}}

{{/* The passphrase callers must give: only by secretKeyRef (the chart's Secret or
     srt.passphraseSecret), and only when one is set (empty: no encryption). */}}
{{- define "arcly.srtEnv" -}}
{{- $s := .Values.srt -}}
{{- if and $s.enabled (or $s.passphrase $s.passphraseSecret) }}
- name: ARCLY_SRT_PASSPHRASE
  valueFrom: {secretKeyRef: {{ include "arcly.secretRef" (dict "root" . "existing" $s.passphraseSecret "existingKey" "srt-passphrase" "key" "srt-passphrase") }}}
{{- end }}
{{- end -}}

{{/* The Service port of SRT: on the ingest and edge Services, or (srt.separateService) on
     Services of their own for load balancers that cannot mix TCP and UDP. */}}
{{- define "arcly.srtServicePort" -}}
- {name: srt, port: {{ .Values.srt.port }}, targetPort: srt, protocol: UDP}
{{- end -}}

{{/* The dedicated SRT Service of a role, when srt.separateService:
     (dict "root" . "name" SUFFIX "component" origin|edge "service" SERVICE_VALUES) */}}
{{- define "arcly.srtService" -}}
{{- if and .root.Values.srt.enabled .root.Values.srt.separateService }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "arcly.fullname" .root }}-{{ .name }}-srt
  labels: {{- include "arcly.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with .service.annotations }}
  annotations: {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- include "arcly.serviceOptions" .service | nindent 2 }}
  selector: {{- include "arcly.selector" (dict "root" .root "component" .component) | nindent 4 }}
  ports:
    {{- include "arcly.srtServicePort" .root | nindent 4 }}
{{- end }}
{{- end -}}

{{/* The node container's probes and drain hook, on the endpoints the node serves. */}}
{{- define "arcly.nodeProbes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  failureThreshold: 2
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 30
lifecycle:
  preStop:
    # Let the Service drop this Pod from its endpoints before SIGTERM starts the drain.
    exec: {command: ["/bin/sh", "-c", "sleep {{ .preStopSeconds }}"]}
{{- end -}}

{{/* preStop + drain + a margin for the last goodbyes: one number, derived. */}}
{{- define "arcly.gracePeriod" -}}{{ add .preStopSeconds .drainTimeout 15 }}{{- end -}}

{{/* What a rollout must follow, per workload: a change of these values restarts its Pods
     (generated tokens never change a render, so GitOps renders stay stable; Redis restarts
     only for its password, so rotating an API token does not wipe the registry). */}}
{{- define "arcly.redisAuthValues" -}}
{{- $r := .Values.redis -}}
{{- dict "password" $r.password "existing" $r.existingPasswordSecret | toJson -}}
{{- end -}}

{{- define "arcly.checksum" -}}
{{- $v := .root.Values -}}
{{- $r := $v.redis -}}
{{- $registry := dict "auth" (include "arcly.redisAuthValues" .root) "bundled" $r.bundled "url" $r.externalUrl "secret" $r.existingSecret -}}
{{- if eq .component "redis" -}}
{{- include "arcly.redisAuthValues" .root | sha256sum -}}
{{- else if eq .component "operator" -}}
{{- $registry | toJson | sha256sum -}}
{{- else -}}
{{- $srt := dict "passphrase" $v.srt.passphrase "secret" $v.srt.passphraseSecret -}}
{{- /* not auth.config nor config: the nodes reload those files in place */ -}}
{{- $auth := omit $v.auth "config" -}}
{{- $_ := set $auth "enabled" (include "arcly.authEnabled" .root) -}}
{{- dict "auth" $auth "api" $v.api "relay" $v.relay "registry" $registry "srt" $srt "config" (ne $v.config "") | toJson | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: the config checksum, Prometheus scrape hints, the user's own. */}}
{{- define "arcly.podAnnotations" -}}
checksum/config: {{ include "arcly.checksum" . }}
{{- if and .root.Values.metrics.enabled .root.Values.metrics.scrapeAnnotations .port }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling for a workload: priority, node selection, spread over nodes and zones. */}}
{{- define "arcly.placement" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else if .values.spread }}
topologySpreadConstraints:
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels: {{- include "arcly.selector" (dict "root" $.root "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* A Service's traffic options. */}}
{{- define "arcly.serviceOptions" -}}
type: {{ .type }}
{{- if and .externalTrafficPolicy (ne .type "ClusterIP") }}
externalTrafficPolicy: {{ .externalTrafficPolicy }}
{{- end }}
{{- if and .loadBalancerSourceRanges (eq .type "LoadBalancer") }}
loadBalancerSourceRanges: {{- toYaml .loadBalancerSourceRanges | nindent 2 }}
{{- end }}
{{- end -}}
