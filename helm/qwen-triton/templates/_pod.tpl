{{/* Pieces of the server pod, kept apart from deployment.yaml to keep it readable. */}}

{{/* Secrets are mounted as files, never put in env vars (they leak into crash dumps and `env`). */}}
{{- define "qwen-triton.hubTokenPath" -}}/var/run/secrets/qwen-triton/hub/token{{- end }}
{{- define "qwen-triton.adminKeyPath" -}}/var/run/secrets/qwen-triton/admin/key{{- end }}
{{- define "qwen-triton.openaiKeyPath" -}}/var/run/secrets/qwen-triton/openai/api-key{{- end }}

{{/* huggingface_hub reads the token from the file HF_TOKEN_PATH names. */}}
{{- define "qwen-triton.hubTokenEnv" -}}
{{- if .Values.model.hub.tokenSecret.name }}
- name: HF_TOKEN_PATH
  value: {{ include "qwen-triton.hubTokenPath" . }}
{{- end }}
{{- end }}

{{- define "qwen-triton.hubTokenMount" -}}
{{- if .Values.model.hub.tokenSecret.name }}
- name: hub-token
  mountPath: {{ include "qwen-triton.hubTokenPath" . | dir }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Secret volumes: the hub token and the Triton admin key, when the user names their Secrets. */}}
{{- define "qwen-triton.secretVolumes" -}}
{{- with .Values.model.hub.tokenSecret }}
{{- if .name }}
- name: hub-token
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ include "qwen-triton.hubTokenPath" $ | base }}
{{- end }}
{{- end }}
{{- with .Values.triton.restrictedApis }}
{{- if .existingSecret }}
- name: admin-key
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .existingSecretKey }}
        path: {{ include "qwen-triton.adminKeyPath" $ | base }}
{{- end }}
{{- end }}
{{- with .Values.openai.apiKeySecret }}
{{- if and $.Values.openai.enabled .name }}
- name: openai-api-key
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ include "qwen-triton.openaiKeyPath" $ | base }}
{{- end }}
{{- end }}
{{- end }}

{{/* The OpenAI gateway: a second container, reaching tritonserver's gRPC port over the pod's loopback. */}}
{{- define "qwen-triton.openaiContainer" -}}
{{- $o := .Values.openai }}
- name: openai-gateway
  image: {{ include "qwen-triton.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - qwen-openai
    - --triton-grpc=127.0.0.1:8001
    - --host=0.0.0.0
    - --port={{ $o.port }}
    - --model-name={{ .Values.triton.modelName }}
    {{- if $o.apiKeySecret.name }}
    - --api-key-file={{ include "qwen-triton.openaiKeyPath" . }}
    {{- end }}
  ports:
    - name: openai
      containerPort: {{ $o.port }}
      protocol: TCP
  env:
    - name: HOME
      value: /tmp
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
  # The gateway is up as soon as it listens; /health also reports whether tritonserver answers.
  startupProbe:
    httpGet:
      path: /health
      port: openai
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /health
      port: openai
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  livenessProbe:
    tcpSocket:
      port: openai
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  lifecycle:
    preStop:
      exec:
        command: [sleep, {{ .Values.preStopSleepSeconds | quote }}]
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $o.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if $o.apiKeySecret.name }}
    - name: openai-api-key
      mountPath: {{ include "qwen-triton.openaiKeyPath" . | dir }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* The volume that holds (or caches) the checkpoint, by model.source. */}}
{{- define "qwen-triton.checkpointVolume" -}}
{{- $m := .Values.model -}}
{{- if eq $m.source "hub" }}
- name: hub-cache
  {{- if $m.hub.cache.claimName }}
  persistentVolumeClaim:
    claimName: {{ $m.hub.cache.claimName }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $m.hub.cache.sizeLimit }}
  {{- end }}
{{- else if eq $m.source "pvc" }}
- name: checkpoint
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
- name: checkpoint
  hostPath:
    path: {{ $m.hostPath.path }}
    type: Directory
{{- else }}
- name: checkpoint
  emptyDir:
    sizeLimit: {{ $m.initContainer.sizeLimit }}
{{- end }}
{{- end }}

{{/* tritonserver flags after the entrypoint's `--` (the entrypoint adds the restricted-API flags). */}}
{{- define "qwen-triton.tritonserverArgs" -}}
{{- $t := .Values.triton -}}
- --model-control-mode=none
- --strict-readiness=true
- --http-port=8000
- --grpc-port=8001
- --metrics-port=8002
- --allow-metrics=true
- --allow-gpu-metrics={{ ne .Values.gpu.sharing "none" }}
- --exit-timeout-secs={{ $t.exitTimeoutSeconds }}
- --log-verbose={{ $t.logVerbose }}
{{- with $t.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}
