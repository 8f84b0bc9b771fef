{{/* Chart name, truncated to a DNS label. */}}
{{- define "polytune.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name: the release name when it already contains the chart's. */}}
{{- define "polytune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "polytune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "polytune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of a component: include "polytune.selectorLabels" (dict "ctx" . "component" "worker") */}}
{{- define "polytune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polytune.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "polytune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "polytune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag; include "polytune.image" (dict "ctx" . "repository" "x") */}}
{{- define "polytune.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.image.tag -}}
{{- if .ctx.Values.image.registry -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The NATS URL: the dependency's client Service, or externalNats.url. */}}
{{- define "polytune.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := "" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- $name = .Values.nats.fullnameOverride -}}
{{- else if contains "nats" .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-nats" .Release.Name -}}
{{- end -}}
{{- printf "nats://%s.%s.svc:4222" ($name | trunc 63 | trimSuffix "-") .Release.Namespace -}}
{{- else -}}
{{- required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{- define "polytune.coordinatorAddress" -}}
{{- printf "%s-coordinator.%s.svc:%d" (include "polytune.fullname" .) .Release.Namespace (int .Values.coordinator.grpcPort) -}}
{{- end -}}

{{- define "polytune.authSecretName" -}}
{{- default (printf "%s-auth" (include "polytune.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}
{{- define "polytune.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "polytune.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "polytune.natsAuthSecretName" -}}
{{- default (printf "%s-nats-creds" (include "polytune.fullname" .)) .Values.natsAuth.existingSecret -}}
{{- end -}}
{{- define "polytune.authEnabled" -}}
{{- if or .Values.auth.token .Values.auth.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "polytune.claimName" -}}
{{- default (printf "%s-data" (include "polytune.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Env, volume mounts and volumes every polytune container shares (secrets, data, /tmp). */}}
{{- define "polytune.commonEnv" -}}
- name: POLYTUNE_NATS_URL
  value: {{ include "polytune.natsUrl" . | quote }}
- name: POLYTUNE_LOG_FORMAT
  value: json
{{- if include "polytune.authEnabled" . }}
- name: POLYTUNE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "polytune.authSecretName" . }}
      key: token
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: POLYTUNE_NATS_CREDS
  value: /etc/polytune/nats/nats.creds
{{- end }}
{{- end -}}

{{- define "polytune.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.persistence.enabled }}
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/polytune/tls
  readOnly: true
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: nats-creds
  mountPath: /etc/polytune/nats
  readOnly: true
{{- end }}
{{- end -}}

{{- define "polytune.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.persistence.enabled }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "polytune.claimName" . }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "polytune.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: nats-creds
  secret:
    secretName: {{ include "polytune.natsAuthSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}
