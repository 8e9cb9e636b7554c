{{- define "preprocessing.labels" -}}
app.kubernetes.io/name: preprocessing
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ml-serving-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
