{{/* Pieces of the server pod, kept apart from deployment.yaml to keep it readable. */}}

{{/* Secrets are mounted as files, never put in env vars (they leak into crash dumps and `env`). */}}
{{- define "qwen-triton.hubTokenPath" -}}/var/run/secrets/qwen-triton/hub/token{{- end }}
{{- define "qwen-triton.adminKeyPath" -}}/var/run/secrets/qwen-triton/admin/key{{- end }}

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
