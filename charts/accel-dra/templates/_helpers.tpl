{{/* Names: the release name alone when it already contains the chart name ("accel-dra"). */}}
{{- define "accel-dra.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "accel-dra.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "accel-dra.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accel-dra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "accel-dra.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "accel-dra.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: accel-dra
{{- end -}}

{{- define "accel-dra.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "accel-dra.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "accel-dra.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "accel-dra.gpuClassName" -}}
{{- default .Values.driverName .Values.deviceClasses.gpu.name -}}
{{- end -}}

{{- define "accel-dra.migClassName" -}}
{{- if .Values.deviceClasses.mig.name -}}
{{- .Values.deviceClasses.mig.name -}}
{{- else if hasPrefix "gpu." .Values.driverName -}}
{{- printf "mig.%s" (trimPrefix "gpu." .Values.driverName) -}}
{{- else -}}
{{- printf "mig.%s" .Values.driverName -}}
{{- end -}}
{{- end -}}

{{- define "accel-dra.fake" -}}
{{- if hasPrefix "fake:" .Values.backend -}}true{{- end -}}
{{- end -}}

{{/* Kubelet paths: identical on the host and in the containers (the kubelet dials the path we advertise). */}}
{{- define "accel-dra.registryDir" -}}
{{- printf "%s/plugins_registry" (trimSuffix "/" .Values.kubeletDir) -}}
{{- end -}}

{{- define "accel-dra.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{- define "accel-dra.podResourcesDir" -}}
{{- printf "%s/pod-resources" (trimSuffix "/" .Values.kubeletDir) -}}
{{- end -}}

{{/* The driver root inside the containers: the host path itself, except "/" which cannot be mounted over
the container's own root and goes to /driver-root (the plugin is told the host path separately). */}}
{{- define "accel-dra.driverRootInContainer" -}}
{{- if eq (trimSuffix "/" .Values.driverRoot) "" -}}/driver-root{{- else -}}{{ trimSuffix "/" .Values.driverRoot }}{{- end -}}
{{- end -}}

{{- define "accel-dra.probeCommand" -}}
exec:
  command:
    - accel-dra
    - plugin-probe
    - --driver-name={{ .Values.driverName }}
    - --registry-dir={{ include "accel-dra.registryDir" . }}
    - --plugin-dir={{ include "accel-dra.pluginDir" . }}
    - --timeout={{ sub .Values.plugin.probes.timeoutSeconds 1 }}
{{- end -}}

{{/* A service account token for the containers that call the API server (pods do not automount one). */}}
{{- define "accel-dra.apiAccessMount" -}}
- name: kube-api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}
