{{/*
One worker Deployment; the trainer, inferencer and controller differ only in what they pass.
Usage: include "bert-finetune.workerDeployment" (dict
  "root" $            the chart context
  "component" "trainer"
  "worker" .Values.trainer
  "image" .Values.trainer.image   (resolved: repository, tag, digest, pullPolicy)
  "imageSuffix" "-cpu"  appended to the chart's appVersion when the image has no tag
  "env" (list ...)    EnvVars before the secret ones and extraEnv
  "ports" (list ...)  container ports after `metrics` (the inferencer's `http`); optional
  "gpu" true          GPU fields (trainer with gpu.enabled)
  "shmSizeLimit" ""   a memory-backed /dev/shm of this size when set
  "autoscaled" false  leave replicas to an autoscaler)
*/}}
{{- define "bert-finetune.workerDeployment" -}}
{{- $ := .root }}
{{- $component := .component }}
{{- $worker := .worker }}
{{- $gpu := $.Values.gpu }}
{{- $withGpu := .gpu }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "bert-finetune.componentName" (list $ $component) }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "bert-finetune.componentLabels" (list $ $component) | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ $worker.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $worker.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "bert-finetune.componentSelectorLabels" (list $ $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "bert-finetune.componentLabels" (list $ $component) | nindent 8 }}
        {{- with $worker.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") $ | sha256sum }}
        {{- with $worker.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "bert-finetune.workerServiceAccountName" (list $ $component) }}
      automountServiceAccountToken: {{ $.Values.serviceAccount.automountServiceAccountToken }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "bert-finetune.terminationGracePeriod" (list $component $worker) }}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $worker.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- if and $withGpu $gpu.runtimeClassName }}
      runtimeClassName: {{ $gpu.runtimeClassName }}
      {{- end }}
      securityContext:
        {{- toYaml $.Values.podSecurityContext | nindent 8 }}
      {{- /* singleNode with a GPU: every runs-volume pod must land on the GPU node (the
      trainer's), not on whichever node the first pod lands on, so all of them take the GPU
      pool's nodeSelector and tolerations (the GPU limit stays the trainer's). */}}
      {{- $singleNode := and (eq $.Values.persistence.mode "singleNode") (not $.Values.storage.uri) }}
      {{- $onGpuNode := or $withGpu (and $gpu.enabled $singleNode) }}
      {{- $nodeSelector := $worker.nodeSelector }}
      {{- if $onGpuNode }}
      {{- $nodeSelector = merge (deepCopy $gpu.nodeSelector) $worker.nodeSelector }}
      {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- $tolerations := $worker.tolerations }}
      {{- if $onGpuNode }}
      {{- $tolerations = concat $worker.tolerations $gpu.tolerations }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "bert-finetune.affinity" (list $ $worker.affinity) | trim }}
      affinity:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with $worker.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- /* An emptyDir (object storage) is the pod's own, owned through fsGroup. */}}
      {{- $permissions := and $.Values.persistence.volumePermissions.enabled (not $.Values.storage.uri) }}
      {{- if or $permissions $worker.initContainers }}
      initContainers:
        {{- if $permissions }}
        {{- $owner := printf "%v:%v" (int $.Values.podSecurityContext.runAsUser) (int $.Values.podSecurityContext.runAsGroup) }}
        {{- $dir := $.Values.persistence.mountPath }}
        # persistence.volumePermissions: an NFS share's root (GKE Filestore) is root's and
        # ignores fsGroup; hand it to the workers' uid once (not recursive).
        - name: volume-permissions
          image: {{ include "bert-finetune.image" (list $ .image .imageSuffix) | quote }}
          imagePullPolicy: {{ .image.pullPolicy }}
          command:
            - sh
            - -c
            - {{ printf `[ "$(stat -c %%u:%%g %s)" = %s ] || { chmod 0775 %s && chown %s %s; }` $dir $owner $dir $owner $dir | quote }}
          resources:
            requests:
              cpu: 10m
              memory: 32Mi
            limits:
              memory: 64Mi
          securityContext:
            runAsUser: 0
            runAsGroup: 0
            runAsNonRoot: false
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop: [ALL]
              add: [CHOWN, FOWNER]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: runs
              mountPath: {{ $dir }}
        {{- end }}
        {{- with $worker.initContainers }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "bert-finetune.image" (list $ .image .imageSuffix) | quote }}
          imagePullPolicy: {{ .image.pullPolicy }}
          args: ["worker", {{ $component | quote }}]
          ports:
            - name: metrics
              containerPort: {{ $worker.metricsPort }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "bert-finetune.componentName" (list $ "env") }}
          env:
            {{- toYaml .env | nindent 12 }}
            {{- with include "bert-finetune.temporalSecretEnv" $ | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with include "bert-finetune.storageEnv" (list $ $component) | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $worker.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $worker.startupProbe }}
          startupProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $worker.livenessProbe }}
          livenessProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $worker.readinessProbe }}
          readinessProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- $resources := deepCopy $worker.resources }}
          {{- if $withGpu }}
          {{- $limits := default (dict) $resources.limits }}
          {{- $_ := set $limits $gpu.resourceName (int $gpu.count) }}
          {{- $_ := set $resources "limits" $limits }}
          {{- end }}
          {{- with $resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: runs
              mountPath: {{ $.Values.persistence.mountPath }}
            {{- if .shmSizeLimit }}
            - name: dshm
              mountPath: /dev/shm
            {{- end }}
            {{- include "bert-finetune.baseVolumeMounts" $ | nindent 12 }}
            {{- with $worker.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- if $.Values.storage.uri }}
        # storage.uri: runs live in the object store; this is the pod's private cache and
        # staging area (BERT_RUNS_DIR), gone with the pod.
        - name: runs
          emptyDir:
            {{- $size := index $.Values.storage.cacheSizeLimit $component }}
            sizeLimit: {{ kindIs "string" $size | ternary $size (int64 $size) }}
        {{- else }}
        - name: runs
          persistentVolumeClaim:
            claimName: {{ include "bert-finetune.runsClaimName" $ }}
        {{- end }}
        {{- with .shmSizeLimit }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ . }}
        {{- end }}
        {{- include "bert-finetune.baseVolumes" $ | nindent 8 }}
        {{- with $worker.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}

{{/*
A worker's affinity: its own rules, plus, in persistence.mode singleNode (on the runs volume,
not with storage.uri), a required pod affinity that puts every pod mounting the ReadWriteOnce runs volume on one node. The first
such pod matches its own term, so the scheduler places it freely and the rest follow it.
Usage: include "bert-finetune.affinity" (list $ .Values.trainer.affinity)
*/}}
{{- define "bert-finetune.affinity" -}}
{{- $ := index . 0 }}
{{- $affinity := deepCopy (default (dict) (index . 1)) }}
{{- if and (eq $.Values.persistence.mode "singleNode") (not $.Values.storage.uri) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "bert-finetune.selectorLabels" $ | fromYaml) "matchExpressions" (list (dict "key" "app.kubernetes.io/component" "operator" "In" "values" (list "trainer" "inferencer" "controller")))) }}
{{- $podAffinity := default (dict) $affinity.podAffinity }}
{{- $required := default (list) $podAffinity.requiredDuringSchedulingIgnoredDuringExecution }}
{{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" (append $required $term) }}
{{- $_ := set $affinity "podAffinity" $podAffinity }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}
