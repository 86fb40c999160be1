{{/*
Chart name, truncated to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "bert-finetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters. When the release name already contains
the chart name it is used as is.
*/}}
{{- define "bert-finetune.fullname" -}}
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

{{/*
Name of a per-component object: "<fullname>-<component>". The full name is cut first so the
component suffix always survives the 63-character limit.
Usage: include "bert-finetune.componentName" (list $ "trainer")
*/}}
{{- define "bert-finetune.componentName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $prefix := include "bert-finetune.fullname" $ctx | trunc (int (sub 62 (len $component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $component }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "bert-finetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels shared by every pod of the release.
*/}}
{{- define "bert-finetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bert-finetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels (Kubernetes recommended labels) plus commonLabels.
*/}}
{{- define "bert-finetune.labels" -}}
helm.sh/chart: {{ include "bert-finetune.chart" . }}
{{ include "bert-finetune.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bert-finetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one component. Usage: include "bert-finetune.componentLabels" (list $ "trainer")
*/}}
{{- define "bert-finetune.componentLabels" -}}
{{ include "bert-finetune.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Selector labels of one component. Usage: include "bert-finetune.componentSelectorLabels" (list $ "trainer")
*/}}
{{- define "bert-finetune.componentSelectorLabels" -}}
{{ include "bert-finetune.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "bert-finetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bert-finetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of a worker role: its own with serviceAccount.perRole ("<name>-<role>"), else
the release's. Usage: include "bert-finetune.workerServiceAccountName" (list $ "trainer")
*/}}
{{- define "bert-finetune.workerServiceAccountName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $name := include "bert-finetune.serviceAccountName" $ctx }}
{{- if and $ctx.Values.serviceAccount.create $ctx.Values.serviceAccount.perRole }}
{{- printf "%s-%s" ($name | trunc (int (sub 62 (len $component))) | trimSuffix "-") $component }}
{{- else }}
{{- $name }}
{{- end }}
{{- end }}

{{/*
The frontend Service of the Temporal release, following the temporal chart's fullname rule:
the release name when it contains "temporal", else "<release>-temporal".
*/}}
{{- define "bert-finetune.temporalFrontendService" -}}
{{- $release := .Values.temporal.releaseName }}
{{- if contains "temporal" $release }}
{{- printf "%s-frontend" $release }}
{{- else }}
{{- printf "%s-temporal-frontend" $release }}
{{- end }}
{{- end }}

{{/*
The one place the Temporal address is decided: temporal.address, else the frontend Service of
the Temporal release in this namespace.
*/}}
{{- define "bert-finetune.temporalAddress" -}}
{{- if .Values.temporal.address }}
{{- .Values.temporal.address }}
{{- else if .Values.temporal.releaseName }}
{{- printf "%s.%s.svc:%d" (include "bert-finetune.temporalFrontendService" .) .Release.Namespace (int .Values.temporal.frontendPort) }}
{{- else }}
{{- fail "set temporal.address (host:port of the Temporal frontend) or temporal.releaseName (a Temporal Helm release in this namespace)" }}
{{- end }}
{{- end }}

{{/*
Name of the runs PVC (created or existing).
*/}}
{{- define "bert-finetune.runsClaimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- include "bert-finetune.componentName" (list . "runs") }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository (its registry replaced by global.imageRegistry when
set), then "@digest" when a digest is given, else ":tag" (default: the chart's appVersion,
plus the optional suffix, e.g. "-cpu" for the CPU build of the trainer image).
A tag may itself carry a digest ("tag@sha256:..."), as skaffold sets it.
Usage: include "bert-finetune.image" (list $ .Values.trainer.image ["-cpu"])
*/}}
{{- define "bert-finetune.image" -}}
{{- $ctx := index . 0 }}
{{- $image := index . 1 }}
{{- $suffix := "" }}
{{- if gt (len .) 2 }}
{{- $suffix = default "" (index . 2) }}
{{- end }}
{{- $repository := $image.repository }}
{{- with dig "imageRegistry" "" ($ctx.Values.global | default dict) }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq "localhost" $first)) }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" (rest $parts)) }}
{{- else }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (printf "%s%s" $ctx.Chart.AppVersion $suffix) $image.tag) }}
{{- end }}
{{- end }}

{{/*
The tag suffix of the trainer's default image: the CUDA build with a GPU, "-cpu" without.
*/}}
{{- define "bert-finetune.trainerImageSuffix" -}}
{{- if not .Values.gpu.enabled }}-cpu{{ end }}
{{- end }}

{{/*
BERT_LOCAL_PATH_ROOTS: the configured folders, else the runs volume; with storage.uri there is
no shared folder to default to (each pod's cache is its own), so empty stays empty.
*/}}
{{- define "bert-finetune.localPathRoots" -}}
{{- if .Values.storage.uri }}
{{- join ":" .Values.localPathRoots }}
{{- else }}
{{- join ":" (default (list .Values.persistence.mountPath) .Values.localPathRoots) }}
{{- end }}
{{- end }}

{{/*
TCP port of the object store: the port of storage.endpoint, else its scheme's (443 for https,
80 for http); 443 for AWS S3 (no endpoint).
*/}}
{{- define "bert-finetune.storagePort" -}}
{{- with .Values.storage.endpoint }}
{{- $url := urlParse . }}
{{- $hostPort := splitList ":" $url.host }}
{{- if gt (len $hostPort) 1 }}
{{- last $hostPort }}
{{- else if eq $url.scheme "http" }}
{{- 80 }}
{{- else }}
{{- 443 }}
{{- end }}
{{- else }}
{{- 443 }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity (a number of bytes, or with a suffix: Ki Mi Gi Ti Pi Ei, k K M G T P E,
m) in GiB, as a float. Usage: include "bert-finetune.quantityGiB" "50Gi"
*/}}
{{- define "bert-finetune.quantityGiB" -}}
{{- if not (kindIs "string" .) }}
{{- divf (float64 .) 1073741824.0 }}
{{- else }}
{{- $text := . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text }}
{{- $suffix := trimPrefix $number $text }}
{{- $bytes := dict "" 1.0 "m" 0.001 "k" 1e3 "K" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- divf (mulf (float64 $number) (index $bytes $suffix)) 1073741824.0 }}
{{- end }}
{{- end }}

{{/*
The environment of a worker role's object store (workers only): BERT_STORE_CACHE_GB, half its
cache emptyDir's size limit (the other half for staging: the trainer's checkpoints and
commits, a model downloaded while the cache is full), so the download cache never gets the
pod evicted; then its access keys.
Usage: include "bert-finetune.storageEnv" (list $ "trainer")
*/}}
{{- define "bert-finetune.storageEnv" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- if $.Values.storage.uri }}
{{- $limit := include "bert-finetune.quantityGiB" (index $.Values.storage.cacheSizeLimit $component) | float64 }}
{{- if lt $limit 2.0 }}
{{- fail (printf "storage.cacheSizeLimit.%s must be at least 2Gi: half of it bounds the download cache (BERT_STORE_CACHE_GB, at least 1 GiB), the other half is for staging" $component) }}
{{- end }}
- name: BERT_STORE_CACHE_GB
  value: {{ max 1 (floor (divf $limit 2)) | int | quote }}
{{- include "bert-finetune.storageSecretEnv" (list $ $component) }}
{{- end }}
{{- end }}

{{/*
A worker role's object-store access keys: storage.roleSecrets.<role>, else
storage.existingSecret (workers only: nothing else touches the store). Without a Secret the
AWS credential chain applies (IRSA, EKS Pod Identity).
Usage: include "bert-finetune.storageSecretEnv" (list $ "trainer")
*/}}
{{- define "bert-finetune.storageSecretEnv" -}}
{{- $storage := (index . 0).Values.storage }}
{{- $secret := default $storage.existingSecret (index $storage.roleSecrets (index . 1)) }}
{{- if and $storage.uri $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $storage.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $storage.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy peers of the Temporal frontend: networkPolicy.temporalTo, else derived from
where the chart points the workers (a release in this namespace, or a Service address in
another namespace); an address the chart cannot map to pods fails the render.
*/}}
{{- define "bert-finetune.temporalPeers" -}}
{{- $np := .Values.networkPolicy }}
{{- $address := .Values.temporal.address }}
{{- if $np.temporalTo }}
{{- toYaml $np.temporalTo }}
{{- else if not $address }}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: temporal
      app.kubernetes.io/instance: {{ .Values.temporal.releaseName }}
      app.kubernetes.io/component: frontend
{{- else }}
{{- $host := first (splitList ":" $address) }}
{{- $labels := splitList "." $host }}
{{- if and (ge (len $labels) 3) (eq (index $labels 2) "svc") }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ index $labels 1 }}
  podSelector:
    matchLabels:
      app.kubernetes.io/name: temporal
      app.kubernetes.io/component: frontend
{{- else }}
{{- fail (printf "networkPolicy.enabled: cannot derive which pods serve temporal.address %q; set networkPolicy.temporalTo (e.g. an ipBlock for Temporal Cloud, or a namespaceSelector + podSelector for a Temporal in the cluster)" $address) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
TCP port of the Temporal frontend: the port of temporal.address, else temporal.frontendPort.
*/}}
{{- define "bert-finetune.temporalPort" -}}
{{- if .Values.temporal.address }}
{{- last (splitList ":" .Values.temporal.address) }}
{{- else }}
{{- .Values.temporal.frontendPort }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds of a worker: the explicit value or graceful shutdown + 30 s; it
must exceed the worker's graceful shutdown or the kubelet kills it mid-checkpoint.
Usage: include "bert-finetune.terminationGracePeriod" (list "trainer" .Values.trainer)
*/}}
{{- define "bert-finetune.terminationGracePeriod" -}}
{{- $component := index . 0 }}
{{- $worker := index . 1 }}
{{- $graceful := int $worker.gracefulShutdownSeconds }}
{{- if kindIs "invalid" $worker.terminationGracePeriodSeconds }}
{{- add $graceful 30 }}
{{- else }}
{{- $period := int $worker.terminationGracePeriodSeconds }}
{{- if le $period $graceful }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be greater than %s.gracefulShutdownSeconds (%d)" $component $period $component $graceful) }}
{{- end }}
{{- $period }}
{{- end }}
{{- end }}

{{/*
Temporal TLS and API key environment, shared by the workers and the test Pod.
*/}}
{{- define "bert-finetune.temporalSecretEnv" -}}
{{- $tls := .Values.temporal.tls }}
{{- if and $tls.enabled $tls.existingSecret }}
{{- if $tls.certKey }}
- name: TEMPORAL_TLS_CLIENT_CERT_PATH
  value: /etc/temporal-tls/{{ $tls.certKey }}
{{- end }}
{{- if $tls.keyKey }}
- name: TEMPORAL_TLS_CLIENT_KEY_PATH
  value: /etc/temporal-tls/{{ $tls.keyKey }}
{{- end }}
{{- if $tls.caKey }}
- name: TEMPORAL_TLS_SERVER_CA_CERT_PATH
  value: /etc/temporal-tls/{{ $tls.caKey }}
{{- end }}
{{- end }}
{{- with .Values.temporal.apiKey.existingSecret }}
- name: TEMPORAL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.temporal.apiKey.key }}
{{- end }}
{{- with .Values.huggingFace.tokenSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.huggingFace.tokenSecretKey }}
{{- end }}
{{- end }}

{{/*
Volumes every pod gets: /tmp, the cache, and the Temporal TLS Secret when configured.
*/}}
{{- define "bert-finetune.baseVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.huggingFace.cache.sizeLimit }}
{{- with .Values.huggingFace.cache.existingClaim }}
- name: hf-cache
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- $tls := .Values.temporal.tls }}
{{- if and $tls.enabled $tls.existingSecret }}
- name: temporal-tls
  secret:
    secretName: {{ $tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
Mounts matching bert-finetune.baseVolumes.
*/}}
{{- define "bert-finetune.baseVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- if .Values.huggingFace.cache.existingClaim }}
- name: hf-cache
  mountPath: /cache/huggingface
{{- end }}
{{- $tls := .Values.temporal.tls }}
{{- if and $tls.enabled $tls.existingSecret }}
- name: temporal-tls
  mountPath: /etc/temporal-tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Checks of combinations the schema cannot express.
*/}}
{{- define "bert-finetune.validate" -}}
{{- $tls := .Values.temporal.tls }}
{{- if and $tls.existingSecret (not $tls.enabled) }}
{{- fail "temporal.tls.existingSecret is set but temporal.tls.enabled is false" }}
{{- end }}
{{- if ne (empty $tls.certKey) (empty $tls.keyKey) }}
{{- fail "temporal.tls.certKey and temporal.tls.keyKey must be set together (client certificate and its key)" }}
{{- end }}
{{- if and .Values.gpu.enabled (lt (int .Values.gpu.count) 1) }}
{{- fail "gpu.count must be at least 1 when gpu.enabled is true" }}
{{- end }}
{{- if and .Values.storage.uri .Values.persistence.existingClaim }}
{{- fail "storage.uri keeps runs in the object store and mounts no claim, so persistence.existingClaim would be silently unused (the runs on it are not read from the bucket): unset one of them" }}
{{- end }}
{{- $roleSecrets := without (values .Values.storage.roleSecrets) "" }}
{{- if and (or .Values.storage.endpoint .Values.storage.region .Values.storage.existingSecret $roleSecrets) (not .Values.storage.uri) }}
{{- fail "storage.endpoint, storage.region, storage.existingSecret and storage.roleSecrets configure the object store of storage.uri, which is empty: set storage.uri (s3://bucket/prefix) or unset them" }}
{{- end }}
{{- if and .Values.serviceAccount.perRole (not .Values.serviceAccount.create) }}
{{- fail "serviceAccount.perRole creates a ServiceAccount per worker role: it needs serviceAccount.create (or leave perRole off and give serviceAccount.name an existing one)" }}
{{- end }}
{{- if and .Values.gpu.enabled (eq .Values.persistence.mode "singleNode") (not .Values.gpu.nodeSelector) (not .Values.storage.uri) }}
{{- fail "persistence.mode singleNode with gpu.enabled puts every pod that mounts the runs volume on the trainer's GPU node, so the chart must know which nodes those are: set gpu.nodeSelector to a label only the GPU node has, e.g. nvidia.com/gpu.present: \"true\" (GPU operator), cloud.google.com/gke-accelerator: nvidia-l4 (GKE) or eks.amazonaws.com/nodegroup: <your GPU node group> (EKS)" }}
{{- end }}
{{- if and .Values.metrics.prometheusRule.enabled (not .Values.metrics.serviceMonitor.enabled) }}
{{- fail "metrics.prometheusRule.enabled needs metrics.serviceMonitor.enabled: the alerts select this release's ServiceMonitor jobs (each worker's Service name); with annotation scraping load alerts/bert-finetune.rules.yaml yourself with your scrape config's job names" }}
{{- end }}
{{- $hpa := .Values.inferencer.autoscaling }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail "inferencer.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- $httpHpa := and $hpa.httpInFlight .Values.inferencer.http.enabled }}
{{- if and $hpa.enabled (kindIs "invalid" $hpa.targetCPUUtilizationPercentage) (kindIs "invalid" $hpa.targetMemoryUtilizationPercentage) (not $httpHpa) }}
{{- fail "inferencer.autoscaling needs targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or httpInFlight (with inferencer.http.enabled)" }}
{{- end }}
{{- $http := .Values.inferencer.http }}
{{- if and $http.ingress.enabled (not $http.enabled) }}
{{- fail "inferencer.http.ingress.enabled needs inferencer.http.enabled: the Ingress routes to the inferencer's HTTP port" }}
{{- end }}
{{- if and $http.enabled .Values.inferencer.keda.enabled (eq (int .Values.inferencer.keda.minReplicas) 0) }}
{{- fail "inferencer.keda.minReplicas 0 leaves the HTTP endpoint (inferencer.http.enabled) with no pod to answer, and an HTTP request cannot wake one: set minReplicas to 1 or more, or disable inferencer.http" }}
{{- end }}
{{- if and $hpa.enabled .Values.inferencer.keda.enabled }}
{{- fail "inferencer.keda replaces the CPU autoscaler: enable inferencer.keda or inferencer.autoscaling, not both" }}
{{- end }}
{{- range $component := list "trainer" "inferencer" }}
{{- $keda := (index $.Values $component).keda }}
{{- if and $keda.enabled (gt (int $keda.minReplicas) (int $keda.maxReplicas)) }}
{{- fail (printf "%s.keda.minReplicas must not exceed maxReplicas" $component) }}
{{- end }}
{{- end }}
{{- $tls := .Values.temporal.tls }}
{{- if and (or .Values.trainer.keda.enabled .Values.inferencer.keda.enabled) $tls.enabled (not (or (and $tls.existingSecret $tls.certKey) .Values.temporal.apiKey.existingSecret .Values.keda.authenticationRef)) }}
{{- fail "KEDA's Temporal scaler speaks TLS only with a client certificate (temporal.tls.certKey/keyKey) or an API key (temporal.apiKey.existingSecret); for server-only TLS give keda.authenticationRef a TriggerAuthentication that provides one" }}
{{- end }}
{{- $trainerKeda := .Values.trainer.keda }}
{{- if and $trainerKeda.enabled (eq (int $trainerKeda.minReplicas) 0) }}
{{- if not .Values.controller.enabled }}
{{- fail "trainer.keda.minReplicas 0 needs controller.enabled: with no trainer running, only the controller runs the training queue's workflow tasks (experiments, sweeps, promotions)" }}
{{- end }}
{{- if not $trainerKeda.prometheusServerAddress }}
{{- fail "trainer.keda.minReplicas 0 needs trainer.keda.prometheusServerAddress: a running fine-tune is not queue backlog, so without the in-flight trigger KEDA would scale its trainer to zero mid-run" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The worker components this release runs, as a YAML list.
*/}}
{{- define "bert-finetune.workers" -}}
- trainer
- inferencer
{{- if .Values.controller.enabled }}
- controller
{{- end }}
{{- end }}
