{{/* Chart name (or nameOverride), truncated to a DNS label. */}}
{{- define "polytune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Release-qualified name (or fullnameOverride): the release name when it already contains the chart's.
Cut to 45 characters: the longest suffix is "-worker" (7) on a StatefulSet, whose name may have at
most 52 (its pods' controller-revision-hash label is the name, "-" and 10 more); "-coordinator"
(12) on the Deployment, the Services and the rest stay within 63.
*/}}
{{- define "polytune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
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

{{/* registry/repository:tag, or @digest; include "polytune.image" (dict "ctx" . "repository" "x" "digest" "sha256:...") */}}
{{- define "polytune.image" -}}
{{- $ref := printf ":%s" (default .ctx.Chart.AppVersion .ctx.Values.image.tag) -}}
{{- if .digest -}}{{- $ref = printf "@%s" .digest -}}{{- end -}}
{{- if .ctx.Values.image.registry -}}
{{- printf "%s/%s%s" .ctx.Values.image.registry .repository $ref -}}
{{- else -}}
{{- printf "%s%s" .repository $ref -}}
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
{{- define "polytune.tlsMutualSecretName" -}}
{{- default (printf "%s-tls-worker" (include "polytune.fullname" .)) .Values.tls.mutual.existingSecret -}}
{{- end -}}
{{- define "polytune.natsAuthSecretName" -}}
{{- default (printf "%s-nats-auth" (include "polytune.fullname" .)) .Values.natsAuth.existingSecret -}}
{{- end -}}
{{- define "polytune.natsTlsSecretName" -}}
{{- default (printf "%s-nats-tls" (include "polytune.fullname" .)) .Values.natsTls.existingSecret -}}
{{- end -}}
{{/* A client certificate toward NATS: given inline, or said to be in the existing Secret. */}}
{{- define "polytune.natsTlsClientCert" -}}
{{- if or .Values.natsTls.cert .Values.natsTls.clientCertificate -}}true{{- end -}}
{{- end -}}
{{- define "polytune.authEnabled" -}}
{{- if or .Values.auth.enabled .Values.auth.token .Values.auth.workerToken .Values.auth.existingSecret -}}true{{- end -}}
{{- end -}}
{{/* A token: the value given, else the one in the Secret from an earlier install, else a new random one. */}}
{{- define "polytune.token" -}}
{{- $given := index .ctx.Values.auth .value -}}
{{- if $given -}}
{{- $given | trim -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .ctx.Release.Namespace (include "polytune.authSecretName" .ctx) -}}
{{- if and $old $old.data (index $old.data .key) -}}
{{- index $old.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- define "polytune.tlsMutual" -}}
{{- if and .Values.tls.enabled .Values.tls.mutual.enabled -}}true{{- end -}}
{{- end -}}
{{/* The name the workers expect in the coordinator's certificate. */}}
{{- define "polytune.tlsServerName" -}}
{{- default (printf "%s-coordinator.%s.svc" (include "polytune.fullname" .) .Release.Namespace) .Values.tls.serverName -}}
{{- end -}}

{{/*
Checks of values that the schema cannot express (it cannot compare two values); included by
secrets.yaml, so a bad combination fails the install with a message naming the values.
*/}}
{{- define "polytune.validate" -}}
{{- if not .Values.auth.existingSecret -}}
{{- if and .Values.auth.token (not .Values.auth.workerToken) -}}
{{- fail "auth.workerToken is required with auth.token: workers join with their own token (POLYTUNE_WORKER_TOKEN), never the client token" -}}
{{- end -}}
{{- if and .Values.auth.workerToken (not .Values.auth.token) -}}
{{- fail "auth.token is required with auth.workerToken: without it every JobService call (submit, cancel) is open" -}}
{{- end -}}
{{- if and .Values.auth.token (eq (trim .Values.auth.token) (trim .Values.auth.workerToken)) -}}
{{- fail "auth.workerToken must differ from auth.token: the coordinator refuses to start when they are equal (a worker must not be able to submit or cancel)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.mutual.enabled (not .Values.tls.enabled) -}}
{{- fail "tls.mutual.enabled needs tls.enabled (mutual TLS is TLS first)" -}}
{{- end -}}
{{- if .Values.nats.enabled -}}
{{- $merge := default (dict) .Values.nats.config.merge -}}
{{- $include := false -}}
{{- range $k, $v := $merge -}}{{- if hasSuffix "$include" $k -}}{{- $include = true -}}{{- end -}}{{- end -}}
{{- $operator := or (hasKey $merge "operator") $include -}}
{{- if and .Values.natsAuth.enabled (not .Values.natsAuth.existingSecret) (not .Values.natsAuth.coordinatorCreds) (not $operator) -}}
{{- fail "natsAuth is on by default and needs credentials: run `coordinator nats-auth init --out DIR`, create a Secret from DIR's coordinator.creds, account-signing-key.nk and account.pub (natsAuth.existingSecret), and put nats-auth.conf's lines (or a $include of it) under nats.config.merge; or set natsAuth.enabled=false to leave NATS without authentication (README \"Deploying on Kubernetes with Helm\")" -}}
{{- end -}}
{{- if and .Values.natsAuth.enabled (not $operator) -}}
{{- fail "natsAuth.enabled but the NATS server is not in operator mode: put the lines of nats-auth.conf (coordinator nats-auth init) under nats.config.merge, or a $include of it (README \"Deploying on Kubernetes with Helm\")" -}}
{{- end -}}
{{- if and (hasKey $merge "operator") (not .Values.natsAuth.enabled) -}}
{{- fail "nats.config.merge.operator puts the NATS server in operator mode, where the coordinator cannot connect without credentials: set natsAuth" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The storage roots, ':'-joined: the values, else the shared volume's mountPath; empty: none. */}}
{{- define "polytune.storageRoots" -}}
{{- if .Values.storageRoots -}}
{{- join ":" .Values.storageRoots -}}
{{- else if .Values.persistence.enabled -}}
{{- .Values.persistence.mountPath -}}
{{- end -}}
{{- end -}}

{{/* POLYTUNE_STORAGE_ROOTS for the coordinator and the workers (both check a spec's paths). */}}
{{- define "polytune.storageRootsEnv" -}}
{{- with include "polytune.storageRoots" . }}
- name: POLYTUNE_STORAGE_ROOTS
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "polytune.claimName" -}}
{{- default (printf "%s-data" (include "polytune.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Env every polytune container shares. Secrets are per component: see coordinatorSecurity*, workerSecurity*. */}}
{{- define "polytune.commonEnv" -}}
- name: POLYTUNE_NATS_URL
  value: {{ include "polytune.natsUrl" . | quote }}
- name: POLYTUNE_LOG_FORMAT
  value: json
{{- if .Values.natsTls.enabled }}
- name: POLYTUNE_NATS_TLS_CA
  value: /etc/polytune/nats-tls/ca.crt
{{- if include "polytune.natsTlsClientCert" . }}
- name: POLYTUNE_NATS_TLS_CERT
  value: /etc/polytune/nats-tls/tls.crt
- name: POLYTUNE_NATS_TLS_KEY
  value: /etc/polytune/nats-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* The coordinator's security env (cli-security.ts serveSecurity): both tokens, its TLS, its NATS credentials and signing key. */}}
{{- define "polytune.coordinatorSecurityEnv" -}}
{{- if include "polytune.authEnabled" . }}
- name: POLYTUNE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "polytune.authSecretName" . }}
      key: token
- name: POLYTUNE_WORKER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "polytune.authSecretName" . }}
      key: worker-token
{{- end }}
{{- if .Values.tls.enabled }}
- name: POLYTUNE_TLS_CERT
  value: /etc/polytune/tls/tls.crt
- name: POLYTUNE_TLS_KEY
  value: /etc/polytune/tls/tls.key
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: POLYTUNE_TLS_CLIENT_CA
  value: /etc/polytune/tls-client-ca/ca.crt
{{/* Every worker pod presents the same certificate (tls.mutual), so its name cannot be each worker's id. */}}
- name: POLYTUNE_WORKER_ID_FROM_CERT
  value: "0"
{{- end }}
{{- if not (or .Values.natsAuth.enabled (and .Values.natsTls.enabled (include "polytune.natsTlsClientCert" .))) }}
{{/* No NATS credentials: the in-cluster NATS is reachable by every pod the NetworkPolicy lets in (README "Security"). */}}
- name: POLYTUNE_INSECURE_NATS
  value: "1"
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: POLYTUNE_NATS_CREDS
  value: /etc/polytune/nats/coordinator.creds
- name: POLYTUNE_NATS_ACCOUNT_SIGNING_KEY
  value: /etc/polytune/nats/account-signing-key.nk
- name: POLYTUNE_NATS_ACCOUNT
  valueFrom:
    secretKeyRef:
      name: {{ include "polytune.natsAuthSecretName" . }}
      key: account.pub
- name: POLYTUNE_NATS_CREDS_TTL
  value: {{ .Values.natsAuth.credsTtlSeconds | int | toString | quote }}
- name: POLYTUNE_NATS_SYSTEM_CREDS
  value: /etc/polytune/nats/system.creds
- name: POLYTUNE_NATS_ACCOUNT_JWT
  value: /etc/polytune/nats/account.jwt
- name: POLYTUNE_NATS_OPERATOR_SIGNING_KEY
  value: /etc/polytune/nats/operator-signing-key.nk
{{- end }}
{{- end -}}

{{- define "polytune.coordinatorSecurityMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/polytune/tls
  readOnly: true
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: tls-client-ca
  mountPath: /etc/polytune/tls-client-ca
  readOnly: true
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: nats-auth
  mountPath: /etc/polytune/nats
  readOnly: true
{{- end }}
{{- end -}}

{{- define "polytune.coordinatorSecurityVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "polytune.tlsSecretName" . }}
    defaultMode: 0440
    items:
      - { key: tls.crt, path: tls.crt }
      - { key: tls.key, path: tls.key }
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: tls-client-ca
  secret:
    secretName: {{ include "polytune.tlsMutualSecretName" . }}
    defaultMode: 0440
    items:
      - { key: ca.crt, path: ca.crt }
{{- end }}
{{- if .Values.natsAuth.enabled }}
- name: nats-auth
  secret:
    secretName: {{ include "polytune.natsAuthSecretName" . }}
    defaultMode: 0440
    items:
      - { key: coordinator.creds, path: coordinator.creds }
      - { key: account-signing-key.nk, path: account-signing-key.nk }
      - { key: system.creds, path: system.creds }
      - { key: account.jwt, path: account.jwt }
      - { key: operator-signing-key.nk, path: operator-signing-key.nk }
{{- end }}
{{- end -}}

{{/*
The workers' security env (worker/cli.ts): the worker token, the CA and name of the coordinator's
certificate, their client certificate under mutual TLS. No client token, no NATS credentials
(each assignment carries the job's).
*/}}
{{- define "polytune.workerSecurityEnv" -}}
{{- if include "polytune.authEnabled" . }}
- name: POLYTUNE_WORKER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "polytune.authSecretName" . }}
      key: worker-token
{{- end }}
{{- if .Values.tls.enabled }}
- name: POLYTUNE_TLS_CA
  value: /etc/polytune/tls-ca/ca.crt
- name: POLYTUNE_TLS_SERVER_NAME
  value: {{ include "polytune.tlsServerName" . | quote }}
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: POLYTUNE_TLS_CLIENT_CERT
  value: /etc/polytune/tls-client/tls.crt
- name: POLYTUNE_TLS_CLIENT_KEY
  value: /etc/polytune/tls-client/tls.key
{{- end }}
{{- end -}}

{{- define "polytune.workerSecurityMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  mountPath: /etc/polytune/tls-ca
  readOnly: true
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: tls-client
  mountPath: /etc/polytune/tls-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "polytune.workerSecurityVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ include "polytune.tlsSecretName" . }}
    defaultMode: 0440
    items:
      - { key: ca.crt, path: ca.crt }
{{- end }}
{{- if include "polytune.tlsMutual" . }}
- name: tls-client
  secret:
    secretName: {{ include "polytune.tlsMutualSecretName" . }}
    defaultMode: 0440
    items:
      - { key: tls.crt, path: tls.crt }
      - { key: tls.key, path: tls.key }
{{- end }}
{{- end -}}

{{/* Volume mounts and volumes every polytune container shares (data, /tmp). */}}
{{- define "polytune.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.persistence.enabled }}
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
{{- end }}
{{- if .Values.natsTls.enabled }}
- name: nats-tls
  mountPath: /etc/polytune/nats-tls
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
{{- if .Values.natsTls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ include "polytune.natsTlsSecretName" . }}
    defaultMode: 0440
    items:
      - { key: ca.crt, path: ca.crt }
      {{- if include "polytune.natsTlsClientCert" . }}
      - { key: tls.crt, path: tls.crt }
      - { key: tls.key, path: tls.key }
      {{- end }}
{{- end }}
{{- end -}}

{{/*
The workers' readiness and liveness: every heartbeat file (worker/heartbeat-file.ts, one a process)
touched within worker.liveness.maxStallSeconds. A process that has not written one yet is covered
by the startup probe.
*/}}
{{- define "polytune.heartbeatProbe" -}}
{{- $script := printf "now=$(date +%%s); n=0; for f in /tmp/heartbeat/*.heartbeat; do [ -e \"$f\" ] || exit 1; n=$((n+1)); [ $((now - $(stat -c %%Y \"$f\"))) -lt %d ] || exit 1; done; [ \"$n\" -ge %d ]" (int .Values.worker.liveness.maxStallSeconds) (int .Values.worker.processesPerPod) -}}
{{- list "sh" "-c" $script | toJson -}}
{{- end -}}

{{/* The NATS dependency's pod labels (its chart: app.kubernetes.io/name nats, or its nameOverride). */}}
{{- define "polytune.natsSelectorLabels" -}}
app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end -}}
