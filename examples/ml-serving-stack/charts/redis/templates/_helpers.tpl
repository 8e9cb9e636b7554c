{{- define "redis.labels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ml-serving-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
