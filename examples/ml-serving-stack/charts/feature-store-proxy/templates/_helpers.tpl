{{- define "feature-store-proxy.labels" -}}
app.kubernetes.io/name: feature-store-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ml-serving-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
