{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "agentrun-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. The release name alone when it already contains the
chart name (`helm install agentrun-operator ...` gives `agentrun-operator`).
*/}}
{{- define "agentrun-operator.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "agentrun-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "agentrun-operator.labels" -}}
helm.sh/chart: {{ include "agentrun-operator.chart" . }}
{{ include "agentrun-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentrun
{{- end }}

{{/* Labels that select the operator Pod; they must never change between upgrades. */}}
{{- define "agentrun-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrun-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "agentrun-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentrun-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest pins it, else the tag, else the chart's appVersion. */}}
{{- define "agentrun-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Pod termination grace: the operator's own shutdown grace, rounded up, plus 10 seconds for
the last status writes and the process exit, so the kubelet never kills a draining operator.
*/}}
{{- define "agentrun-operator.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.operator.shutdownGraceSeconds) 10 }}
{{- end }}

{{/*
Checks across values that the schema cannot express. Included by the Deployment, so
`helm template`, `helm lint` and `helm install` all stop with a clear message.
*/}}
{{- define "agentrun-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the Roles are created in those namespaces only (an empty list would watch the whole cluster)" }}
{{- end }}
{{- /* The operator's own rule (agentrun.settings, LEASE_JITTER = 1.2): a leader that cannot renew stops before a standby may take over. */}}
{{- $lease := .Values.leaderElection }}
{{- if not (and (gt (float64 $lease.leaseDurationSeconds) (float64 $lease.renewDeadlineSeconds)) (gt (float64 $lease.renewDeadlineSeconds) (mulf $lease.retryPeriodSeconds 1.2))) }}
{{- fail (printf "leaderElection needs leaseDurationSeconds > renewDeadlineSeconds > 1.2 x retryPeriodSeconds (a leader that cannot renew must stop before a standby takes over), got %v > %v > 1.2 x %v" $lease.leaseDurationSeconds $lease.renewDeadlineSeconds $lease.retryPeriodSeconds) }}
{{- end }}
{{- if and .Values.metrics.service.enabled (eq (int .Values.operator.metricsPort) 0) }}
{{- fail "metrics.service.enabled needs operator.metricsPort > 0 (0 disables the metrics endpoint)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- if eq (int .Values.operator.livenessPort) (int .Values.operator.metricsPort) }}
{{- fail "operator.livenessPort and operator.metricsPort must differ" }}
{{- end }}
{{- if and .Values.admissionPolicy.enabled (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "admissionPolicy.enabled needs Kubernetes 1.30 or later (ValidatingAdmissionPolicy v1), not %s; set it to false only if AgentRun creators may read every Secret in the watched namespaces anyway" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
