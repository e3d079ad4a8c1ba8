{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "qwen-triton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name; the release name alone when it already contains the chart name. */}}
{{- define "qwen-triton.fullname" -}}
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

{{- define "qwen-triton.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen-triton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels but the component; objects that are not the inference server add their own. */}}
{{- define "qwen-triton.commonLabels" -}}
helm.sh/chart: {{ include "qwen-triton.chart" . }}
{{ include "qwen-triton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: qwen-triton
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "qwen-triton.labels" -}}
{{ include "qwen-triton.commonLabels" . }}
app.kubernetes.io/component: inference-server
{{- end }}

{{/* The metrics Service's labels: the chart's, with component "metrics" (what the ServiceMonitor selects). */}}
{{- define "qwen-triton.metricsServiceLabels" -}}
{{ include "qwen-triton.commonLabels" . }}
app.kubernetes.io/component: metrics
{{- end }}

{{- define "qwen-triton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwen-triton.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qwen-triton.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $defaultTag := printf "%s%s" .Chart.AppVersion (ternary "-cpu" "" (eq .Values.gpu.sharing "none")) }}
{{- printf "%s:%s" .Values.image.repository (default $defaultTag .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* GPUs ------------------------------------------------------------------------------------- */}}

{{/* The extended resource a pod asks for; "" when gpu.sharing is none. */}}
{{- define "qwen-triton.gpuResourceName" -}}
{{- $gpu := .Values.gpu }}
{{- if eq $gpu.sharing "mig" }}
{{- printf "nvidia.com/mig-%s" $gpu.migProfile }}
{{- else if and (has $gpu.sharing (list "time-slicing" "mps")) $gpu.renameByDefault }}
{{- print "nvidia.com/gpu.shared" }}
{{- else if ne $gpu.sharing "none" }}
{{- print "nvidia.com/gpu" }}
{{- end }}
{{- end }}

{{/* Exclusive GPUs per pod: gpu.count, or more when one engine spans more (tensor parallelism). */}}
{{- define "qwen-triton.gpuResourceCount" -}}
{{- if eq .Values.gpu.sharing "exclusive" }}{{ max (int .Values.gpu.count) (int .Values.engine.tensorParallelSize) }}{{ else }}1{{ end }}
{{- end }}

{{/* How many engines share one card's memory: pods per GPU (time-slicing, mps) x instances per pod. */}}
{{- define "qwen-triton.enginesPerGpu" -}}
{{- $pods := 1 }}
{{- if has .Values.gpu.sharing (list "time-slicing" "mps") }}{{ $pods = .Values.gpu.replicasPerGpu }}{{ end }}
{{- mul $pods .Values.gpu.instancesPerPod }}
{{- end }}

{{/* engine.kv_memory_fraction, or 0.9 split among the engines that share a card, or "" (image default). */}}
{{- define "qwen-triton.kvMemoryFraction" -}}
{{- $sharers := include "qwen-triton.enginesPerGpu" . | int }}
{{- if ne (toString .Values.engine.kv_memory_fraction) "" }}
{{- .Values.engine.kv_memory_fraction }}
{{- else if gt $sharers 1 }}
{{- printf "%.3f" (divf 0.9 $sharers) }}
{{- end }}
{{- end }}

{{/* Model weights ---------------------------------------------------------------------------- */}}

{{/* The `model` engine parameter: a hub id or a path inside the container. */}}
{{- define "qwen-triton.checkpoint" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "hub" }}
{{- $m.hub.id }}
{{- else if eq $m.source "pvc" }}
{{- if $m.pvc.subPath }}{{ printf "%s/%s" $m.mountPath $m.pvc.subPath }}{{ else }}{{ $m.mountPath }}{{ end }}
{{- else if eq $m.source "hostPath" }}
{{- $m.mountPath }}
{{- else }}
{{- printf "%s/checkpoint" $m.mountPath }}
{{- end }}
{{- end }}

{{/* config.pbtxt parameters as key=value lines; empty values keep the image's defaults. */}}
{{- define "qwen-triton.engineParams" -}}
{{- $params := dict }}
{{- range $key, $value := omit .Values.engine "tensorParallelSize" }}
{{- if ne (toString $value) "" }}{{ $_ := set $params $key (toString $value) }}{{ end }}
{{- end }}
{{- /* Written only when > 1: the image's default is one GPU. */}}
{{- if gt (int .Values.engine.tensorParallelSize) 1 }}
{{- $_ := set $params "tensor_parallel_size" (toString .Values.engine.tensorParallelSize) }}
{{- end }}
{{- $fraction := include "qwen-triton.kvMemoryFraction" . }}
{{- if $fraction }}{{ $_ := set $params "kv_memory_fraction" $fraction }}{{ end }}
{{- range $key := keys $params | sortAlpha }}
{{ $key }}={{ get $params $key }}
{{- end }}
{{- end }}

{{/* Autoscaling PromQL ------------------------------------------------------------------------ */}}

{{/* prometheus-adapter metricsQuery: the adapter fills <<.LabelMatchers>> (namespace, pods) and <<.GroupBy>>. */}}
{{- define "qwen-triton.adapterMetricsQuery" -}}
{{- $a := .Values.autoscaling }}
{{- printf "sum(avg_over_time(%s{<<.LabelMatchers>>,model=%q}[%s])) by (<<.GroupBy>>)" $a.metric.name .Values.triton.modelName $a.metric.window }}
{{- end }}

{{/* KEDA query: the release's total; KEDA's AverageValue divides it by the replica count, like the HPA. */}}
{{- define "qwen-triton.kedaQuery" -}}
{{- $a := .Values.autoscaling }}
{{- printf "sum(avg_over_time(%s{namespace=%q,pod=~%q,model=%q}[%s]))" $a.metric.name .Release.Namespace (printf "%s-.*" (include "qwen-triton.fullname" .)) .Values.triton.modelName $a.metric.window }}
{{- end }}

{{/* Checks that turn a bad combination into an error naming the field and the fix. */}}
{{- define "qwen-triton.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.model.source "pvc") (not $v.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName: the PersistentVolumeClaim holding the checkpoint" }}
{{- end }}
{{- if and (eq $v.model.source "hostPath") (not $v.model.hostPath.path) }}
{{- fail "model.source=hostPath needs model.hostPath.path: the node folder holding the checkpoint" }}
{{- end }}
{{- if and (eq $v.model.source "hub") (not $v.model.hub.id) }}
{{- fail "model.source=hub needs model.hub.id, e.g. Qwen/Qwen2.5-7B-Instruct" }}
{{- end }}
{{- $drain := add $v.preStopSleepSeconds $v.triton.drainTimeoutSeconds $v.triton.exitTimeoutSeconds }}
{{- if lt (int $v.terminationGracePeriodSeconds) (int $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + triton.drainTimeoutSeconds + triton.exitTimeoutSeconds (%v), or in-flight requests are killed mid-generation" $v.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and (eq $v.gpu.sharing "none") (eq $v.engine.device "cuda") }}
{{- fail "gpu.sharing=none gives the pod no GPU: set engine.device=cpu, or pick a gpu.sharing mode" }}
{{- end }}
{{- if and (gt (int $v.engine.tensorParallelSize) 1) (ne $v.gpu.sharing "exclusive") }}
{{- fail (printf "engine.tensorParallelSize=%v needs whole GPUs: gpu.sharing=%s gives the pod one (shared) device; use gpu.sharing=exclusive" $v.engine.tensorParallelSize $v.gpu.sharing) }}
{{- end }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}
