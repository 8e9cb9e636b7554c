{{- define "result-queue.labels" -}}
app.kubernetes.io/name: result-queue
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ml-serving-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
