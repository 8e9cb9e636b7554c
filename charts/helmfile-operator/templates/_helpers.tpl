{{/* Names, labels and the operator's RBAC rules. */}}

{{- define "helmfile-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helmfile-operator.fullname" -}}
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

{{- define "helmfile-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helmfile-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helmfile-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helmfile-operator.labels" -}}
helm.sh/chart: {{ include "helmfile-operator.chart" . }}
{{ include "helmfile-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
One operator Deployment's identity: the main one (shard "") or a shard's. The main Deployment
keeps the chart's original selector (selectors are immutable); a shard's pods are named
`<name>-shard` so that no selector of one Deployment matches another's pods.
*/}}
{{- define "helmfile-operator.deploymentName" -}}
{{- if .shard }}
{{- printf "%s-shard-%s" (include "helmfile-operator.fullname" .root | trunc 40 | trimSuffix "-") .shard }}
{{- else }}
{{- include "helmfile-operator.fullname" .root }}
{{- end }}
{{- end }}

{{- define "helmfile-operator.deploymentSelectorLabels" -}}
{{- if .shard -}}
app.kubernetes.io/name: {{ printf "%s-shard" (include "helmfile-operator.name" .root | trunc 57 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
helmfile.dev/shard: {{ .shard }}
{{- else -}}
{{ include "helmfile-operator.selectorLabels" .root }}
{{- end }}
{{- end }}

{{- define "helmfile-operator.deploymentLabels" -}}
helm.sh/chart: {{ include "helmfile-operator.chart" .root }}
{{ include "helmfile-operator.deploymentSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Every operator Deployment: the main one, then one per shard key. */}}
{{- define "helmfile-operator.shardKeys" -}}
{{- toJson (prepend .Values.shards "") }}
{{- end }}

{{- define "helmfile-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helmfile-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "helmfile-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does in a namespace it watches (docs/security.md has the why of each rule).
*/}}
{{- define "helmfile-operator.namespacedRules" -}}
# Watch the custom resources, write the children of each state (server-side apply) and delete
# those a state no longer renders; finalizers are metadata patches.
- apiGroups: [helmfile.dev]
  resources: [helmfilestates, helmfilereleases]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [helmfile.dev]
  resources: [helmfilestates/status, helmfilereleases/status]
  verbs: [get, update, patch]
# Events on the custom resources (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# No ConfigMaps or Secrets: valuesFrom, repository credentials and Helm's storage are read
# impersonating the state's ServiceAccount (or defaultServiceAccount), whose RBAC decides.
# helm, the drift check and those reads run as that ServiceAccount: `--kube-as-user`.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [impersonate]
  {{- with .Values.rbac.tenantServiceAccountNames }}
  resourceNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Helm's storage in namespaces releases are installed into (read with the operator's identity). */}}

{{/* Cluster-scoped reads of kopf: CRD changes (re-discovery) and, when watching namespaces, which exist. */}}
{{- define "helmfile-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}
{{- end }}
