{{- define "metacollector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "metacollector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "metacollector.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "metacollector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metacollector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "metacollector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "metacollector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "metacollector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metacollector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Refuse value combinations the collector would reject at startup. */}}
{{- define "metacollector.validate" -}}
{{- if and .Values.mtls.clientCASecret .Values.mtls.clientCAConfigMap }}
{{- fail "mtls: set clientCASecret or clientCAConfigMap, not both" }}
{{- end }}
{{- if and (or .Values.mtls.clientCASecret .Values.mtls.clientCAConfigMap) (not .Values.tls.existingSecret) }}
{{- fail "mtls: a client CA needs TLS on the gRPC port (set tls.existingSecret)" }}
{{- end }}
{{- if and .Values.mtls.nodeBinding (not (or .Values.mtls.clientCASecret .Values.mtls.clientCAConfigMap)) }}
{{- fail "mtls.nodeBinding needs a client CA (mtls.clientCASecret or mtls.clientCAConfigMap)" }}
{{- end }}
{{- if and .Values.mtls.nodeBinding .Values.nodeBinding.peerAddress }}
{{- fail "node binding: set mtls.nodeBinding (certificates) or nodeBinding.peerAddress, not both" }}
{{- end }}
{{- end }}

{{/* True (non-empty) when a client CA is configured. */}}
{{- define "metacollector.clientCA" -}}
{{- if or .Values.mtls.clientCASecret .Values.mtls.clientCAConfigMap }}true{{ end }}
{{- end }}

{{/* The image: [registry/]repository:tag, as upstream's chart (image.registry="" -> no prefix). */}}
{{- define "metacollector.image" -}}
{{- with .Values.image.registry }}{{ . }}/{{ end }}
{{- .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* True (non-empty) when the replicas elect a leader (CloudEvents from exactly one). */}}
{{- define "metacollector.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "metacollector.leaderElectionNamespace" -}}
{{- default (include "metacollector.namespace" .) .Values.leaderElection.namespace }}
{{- end }}

{{- define "metacollector.leaderElectionID" -}}
{{- default (include "metacollector.fullname" .) .Values.leaderElection.id }}
{{- end }}

{{/* Where the projected CloudEvents token is mounted. */}}
{{- define "metacollector.cloudeventsTokenDir" -}}
/var/run/secrets/metacollector/cloudevents
{{- end }}
