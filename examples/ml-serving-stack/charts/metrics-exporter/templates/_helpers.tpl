{{- define "metrics-exporter.labels" -}}
app.kubernetes.io/name: metrics-exporter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ml-serving-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
