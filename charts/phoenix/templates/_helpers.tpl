{{/* The Phoenix version both images are tagged with. */}}
{{- define "phoenix.tag" -}}
{{- default .Chart.AppVersion .Values.imageTag -}}
{{- end -}}

{{/* Labels of every object the chart renders (RBAC carries the first two only,
     as control-plane/src/k8s/rbac.rs generates it). */}}
{{- define "phoenix.labels" -}}
app.kubernetes.io/name: phoenix-control-plane
app.kubernetes.io/part-of: phoenix
app.kubernetes.io/version: {{ include "phoenix.tag" . | quote }}
{{- end -}}
