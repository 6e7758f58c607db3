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

{{- define "arcly.relaySecret" -}}{{ .Values.relay.existingSecret | default (printf "%s-relay" (include "arcly.fullname" .)) }}{{- end -}}

{{- define "arcly.redisUrl" -}}
{{- if .Values.redis.bundled -}}redis://{{ include "arcly.fullname" . }}-redis:6379/0{{- else -}}{{ .Values.redis.externalUrl }}{{- end -}}
{{- end -}}

{{/* Environment shared by origins, edges and the operator. */}}
{{- define "arcly.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: ARCLY_RELAY_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "arcly.relaySecret" . }}, key: token}}
{{- if and (not .Values.redis.bundled) .Values.redis.existingSecret }}
- name: ARCLY_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.existingSecret }}, key: url}}
{{- else }}
- name: ARCLY_REDIS_URL
  value: {{ include "arcly.redisUrl" . | quote }}
{{- end }}
- name: ARCLY_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
- name: ARCLY_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: ARCLY_LOG_JSON
  value: {{ .Values.logJson | quote }}
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
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
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
    exec: {command: ["/bin/sh", "-c", "sleep 5"]}
{{- end -}}
