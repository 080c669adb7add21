{{/* Names, labels and the pieces the RayCluster's three pod templates share. */}}

{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects; also the RayCluster's name. Kept to 40 characters: KubeRay derives
longer names from it (<name>-head-svc, <name>-prefill-worker-xxxxx) and Kubernetes caps names at 63.
*/}}
{{- define "pdserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pdserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pdserve.labels" -}}
helm.sh/chart: {{ include "pdserve.chart" . }}
{{ include "pdserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pdserve
{{- end }}

{{- define "pdserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pdserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pdserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The pdserve config the ConfigMap holds: .Values.pdserve, with what the chart knows filled in unless the
user set it: pool sizes and GPUs per worker from the worker groups, the planner's replica limits from
their minReplicas/maxReplicas, and the Kubernetes actuator's target (this namespace and RayCluster).
*/}}
{{- define "pdserve.config" -}}
{{- $config := deepCopy (.Values.pdserve | default dict) }}
{{- $pools := deepCopy (get $config "pools" | default dict) }}
{{- if not (hasKey $pools "num_prefill") }}
{{- $_ := set $pools "num_prefill" (int .Values.prefill.replicas) }}
{{- end }}
{{- if not (hasKey $pools "num_decode") }}
{{- $_ := set $pools "num_decode" (int .Values.decode.replicas) }}
{{- end }}
{{- if not (hasKey $pools "gpus_per_worker") }}
{{- $_ := set $pools "gpus_per_worker" (min (int .Values.prefill.gpus) (int .Values.decode.gpus)) }}
{{- end }}
{{- $_ := set $config "pools" $pools }}
{{- $planner := deepCopy (get $config "planner" | default dict) }}
{{- $kubernetes := deepCopy (get $planner "kubernetes" | default dict) }}
{{- $target := dict "namespace" .Release.Namespace "raycluster_name" (include "pdserve.fullname" .) "prefill_group" "prefill" "decode_group" "decode" "in_cluster" true }}
{{- $_ := set $planner "kubernetes" (merge $kubernetes $target) }}
{{- range $tier := list "prefill" "decode" }}
{{- $limits := deepCopy (get $planner $tier | default dict) }}
{{- $group := index $.Values $tier }}
{{- if not (hasKey $limits "min_replicas") }}
{{- $_ := set $limits "min_replicas" (int $group.minReplicas) }}
{{- end }}
{{- if not (hasKey $limits "max_replicas") }}
{{- $_ := set $limits "max_replicas" (int $group.maxReplicas) }}
{{- end }}
{{- $_ := set $planner $tier $limits }}
{{- end }}
{{- $_ := set $config "planner" $planner }}
{{- toYaml $config }}
{{- end }}

{{/* Refuse value combinations the schema cannot express, with a message the user can act on. */}}
{{- define "pdserve.validate" -}}
{{- $server := .Values.pdserve.server | default dict }}
{{- if and (hasKey $server "host") (has $server.host (list "127.0.0.1" "localhost" "::1")) }}
{{- fail (printf "pdserve.server.host=%s: the APIs would be unreachable from the Services; use 0.0.0.0" $server.host) }}
{{- end }}
{{- if or (eq (int (include "pdserve.grpcPort" .)) 0) (eq (int (include "pdserve.httpPort" .)) 0) }}
{{- fail "pdserve.server.grpc_port and http_port must be fixed ports (not 0) on Kubernetes: the Services target them" }}
{{- end }}
{{- range $tier := list "prefill" "decode" }}
{{- $group := index $.Values $tier }}
{{- if gt (int $group.minReplicas) (int $group.maxReplicas) }}
{{- fail (printf "%s.minReplicas (%d) is above %s.maxReplicas (%d)" $tier (int $group.minReplicas) $tier (int $group.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $group.replicas) (int $group.minReplicas)) (gt (int $group.replicas) (int $group.maxReplicas)) }}
{{- fail (printf "%s.replicas (%d) must lie within %s.minReplicas..maxReplicas (%d..%d)" $tier (int $group.replicas) $tier (int $group.minReplicas) (int $group.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $pools := .Values.pdserve.pools | default dict }}
{{- if and (lt (int .Values.decode.replicas) 1) (not (hasKey $pools "num_decode")) }}
{{- fail "decode.replicas must be at least 1: pdserve starts pools.num_decode = decode.replicas decode workers" }}
{{- end }}
{{- if and (lt (int .Values.prefill.replicas) 1) (not (hasKey $pools "num_prefill")) (not $pools.colocated) }}
{{- fail "prefill.replicas must be at least 1 for a disaggregated cluster (or set pdserve.pools.colocated=true)" }}
{{- end }}
{{- end }}

{{- define "pdserve.grpcPort" -}}
{{- (.Values.pdserve.server | default dict).grpc_port | default 50051 }}
{{- end }}

{{- define "pdserve.httpPort" -}}
{{- (.Values.pdserve.server | default dict).http_port | default 8000 }}
{{- end }}

{{/* Environment every pdserve container gets. */}}
{{- define "pdserve.env" -}}
- name: PDSERVE_HOME
  value: {{ printf "%s/pdserve" .Values.modelCache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelCache.mountPath | quote }}
- name: HOME
  value: /home/pdserve
- name: XDG_CACHE_HOME
  value: /home/pdserve/.cache
- name: VLLM_NO_USAGE_STATS
  value: "1"
- name: DO_NOT_TRACK
  value: "1"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{ include "pdserve.rayAuthEnv" . }}
{{- end }}

{{/*
Ray's token authentication, for every process that talks to Ray (head, workers, the autoscaler
sidecar, `pdserve up`): RAY_AUTH_MODE and the token from the Secret (Ray reads RAY_AUTH_TOKEN). Set
as environment rather than KubeRay's `authOptions`: the older KubeRay versions the chart supports
(v1.1+) do not know that field and would drop it silently.
Off: RAY_AUTH_MODE=disabled, said explicitly (Ray's own default depends on how a node is started).
*/}}
{{- define "pdserve.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "pdserve.rayAuthSecretName" . }}
      key: {{ .Values.ray.auth.secretKey }}
{{- else -}}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
{{- end }}

{{/* The Secret holding Ray's token: the user's, or the one the chart creates. */}}
{{- define "pdserve.rayAuthSecretName" -}}
{{- .Values.ray.auth.existingSecret | default (printf "%s-ray-auth" (include "pdserve.fullname" .)) }}
{{- end }}

{{/* Writable places under a read-only root filesystem: /tmp (Ray's session dir), $HOME (vLLM, Triton,
torch caches) and the model cache. */}}
{{- define "pdserve.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/pdserve
- name: models
  mountPath: {{ .Values.modelCache.mountPath }}
{{- end }}

{{- define "pdserve.volumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
- name: models
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- end }}

{{/* requests = limits: Ray sizes the node from them, and GPU pods get the Guaranteed QoS class. */}}
{{- define "pdserve.resources" -}}
{{- $amounts := dict "cpu" (toString .cpu) "memory" (toString .memory) }}
{{- if gt (int .gpus) 0 }}
{{- $_ := set $amounts "nvidia.com/gpu" (toString (int .gpus)) }}
{{- end -}}
requests:
{{- range $key, $value := $amounts }}
  {{ $key }}: {{ $value | quote }}
{{- end }}
limits:
{{- range $key, $value := $amounts }}
  {{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Pod-level settings every RayCluster pod shares: placement, identity, security. */}}
{{- define "pdserve.podSpecCommon" -}}
{{- $root := .root }}
{{- $group := .group -}}
serviceAccountName: {{ include "pdserve.serviceAccountName" $root }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "pdserve.podMetadata" -}}
{{- $root := .root -}}
labels:
  {{- include "pdserve.selectorLabels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with .group.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "pdserve.config" $root | sha256sum }}
  {{- with .group.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
A worker group: the Ray custom resource {"<tier>": 1} marks the pod for that tier's worker actors (the
value is a quoted JSON string, as `ray start --resources` and the Ray autoscaler expect it).
*/}}
{{- define "pdserve.workerGroup" -}}
{{- $root := .root }}
{{- $tier := .tier }}
{{- $group := index $root.Values $tier -}}
- groupName: {{ $tier }}
  replicas: {{ int $group.replicas }}
  minReplicas: {{ int $group.minReplicas }}
  maxReplicas: {{ int $group.maxReplicas }}
  rayStartParams:
    {{- $params := dict "resources" (printf "\"{\\\"%s\\\": 1}\"" $tier) }}
    {{- if eq (int $group.gpus) 0 }}
    {{- $_ := set $params "num-gpus" "0" }}
    {{- end }}
    {{- toYaml (merge $params (deepCopy ($group.rayStartParams | default dict))) | nindent 4 }}
  template:
    metadata:
      {{- include "pdserve.podMetadata" (dict "root" $root "group" $group "component" $tier) | nindent 6 }}
    spec:
      {{- include "pdserve.podSpecCommon" (dict "root" $root "group" $group) | nindent 6 }}
      # Workers never call the Kubernetes API.
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ int $group.terminationGracePeriodSeconds }}
      containers:
        - name: ray-worker
          image: {{ include "pdserve.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/bin/bash", "-lc", "--"]
          args:
            - |
              ulimit -n 65536 2>/dev/null || true
              eval "exec $KUBERAY_GEN_RAY_START_CMD"
          env:
            {{- include "pdserve.env" $root | nindent 12 }}
            - name: PDSERVE_TIER
              value: {{ $tier }}
            {{- with $group.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- include "pdserve.resources" $group | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "pdserve.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "pdserve.volumes" $root | nindent 8 }}
{{- end }}
