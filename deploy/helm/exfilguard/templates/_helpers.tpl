{{- define "exfilguard.labels" -}}
app.kubernetes.io/name: exfilguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "exfilguard.selector" -}}
app.kubernetes.io/name: exfilguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
