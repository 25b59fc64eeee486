{{/* The chart name, or nameOverride. */}}
{{- define "lbproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource names: the release name alone when it holds the chart name
(`helm install lbproxy` gives "lbproxy", as in k8s/base), else release-chart. */}}
{{- define "lbproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "lbproxy.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lbproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Every resource: what Helm conventionally adds, and k8s/base's part-of
(the selector labels, with app.kubernetes.io/instance, come first). */}}
{{- define "lbproxy.commonLabels" -}}
helm.sh/chart: {{ include "lbproxy.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lbproxy
{{- end -}}

{{/* The proxy pods: name + instance, so two releases never select each other's pods. */}}
{{- define "lbproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lbproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lbproxy.labels" -}}
{{ include "lbproxy.selectorLabels" . }}
app.kubernetes.io/component: proxy
{{ include "lbproxy.commonLabels" . }}
{{- end -}}

{{- define "lbproxy.redisName" -}}
{{- printf "%s-redis" (include "lbproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lbproxy.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "lbproxy.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lbproxy.redisLabels" -}}
{{ include "lbproxy.redisSelectorLabels" . }}
app.kubernetes.io/component: rate-limits
{{ include "lbproxy.commonLabels" . }}
{{- end -}}

{{/* redis.url, else the in-release Redis when redis.deploy, else nothing. */}}
{{- define "lbproxy.redisURL" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy -}}
{{- printf "redis://%s:6379/0" (include "lbproxy.redisName" .) -}}
{{- end -}}
{{- end -}}

{{/* proxy.yaml: .Values.config with proxy.redis.url set from the redis values.
The ConfigMap holds it and the Deployment's checksum/config is its sha256. */}}
{{- define "lbproxy.proxyConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- $url := include "lbproxy.redisURL" . -}}
{{- if $url -}}
{{- $proxy := $config.proxy -}}
{{- $redis := $proxy.redis | default dict -}}
{{- $_ := set $redis "url" $url -}}
{{- $_ := set $proxy "redis" $redis -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The first listener's port (proxy.listen is one mapping or a list); the
proxy's own default when unset. */}}
{{- define "lbproxy.listenPort" -}}
{{- $listen := dig "proxy" "listen" dict .Values.config | default dict -}}
{{- if kindIs "slice" $listen -}}
{{- $listen = first $listen -}}
{{- end -}}
{{- $listen.port | default 8080 | int -}}
{{- end -}}

{{- define "lbproxy.adminPort" -}}
{{- $admin := dig "proxy" "admin" dict .Values.config | default dict -}}
{{- $admin.port | default 9901 | int -}}
{{- end -}}

{{- define "lbproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
