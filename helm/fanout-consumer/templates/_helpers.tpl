{{/*
Chart name: .Values.nameOverride or the chart's name, truncated to 63 characters because
Kubernetes label values and DNS-1123 label names stop there.
*/}}
{{- define "fanout-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, the prefix of every resource name: .Values.fullnameOverride, or "<release>-<name>",
or just the release name when it already contains the chart name ("fanout-consumer" installed
as "fanout-consumer" is not "fanout-consumer-fanout-consumer"). Truncated to 63 characters.
*/}}
{{- define "fanout-consumer.fullname" -}}
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

{{/*
A component's resource name: "<fullname>-<component>", with the full name cut short enough
that the whole stays within 63 characters. Call with (dict "root" $ "component" "operator").
*/}}
{{- define "fanout-consumer.componentName" -}}
{{- $suffix := printf "-%s" .component }}
{{- $prefix := include "fanout-consumer.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s%s" $prefix $suffix }}
{{- end }}

{{/*
The helm.sh/chart label: "<chart>-<version>", with "+" (invalid in label values) replaced.
*/}}
{{- define "fanout-consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The image tag: .Values.image.tag, or the chart's appVersion when empty.
*/}}
{{- define "fanout-consumer.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The image reference for both entry points: "repository@digest" when a digest is set (immutable),
otherwise "repository:tag".
*/}}
{{- define "fanout-consumer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "fanout-consumer.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Selector labels: name, instance and component only, because a Deployment's selector is
immutable and must not change when the chart or app version does.
Call with (dict "root" $ "component" "operator").
*/}}
{{- define "fanout-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fanout-consumer.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The one labels helper: the selector labels plus version, managed-by, chart and commonLabels.
Call with (dict "root" $ "component" "operator").
*/}}
{{- define "fanout-consumer.labels" -}}
{{ include "fanout-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ include "fanout-consumer.imageTag" .root | replace "+" "_" | replace "@" "_" | replace ":" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "fanout-consumer.name" .root }}
helm.sh/chart: {{ include "fanout-consumer.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the operator's ServiceAccount: .Values.operator.serviceAccount.name, or
"<fullname>-operator" when the chart creates it, or "default" when it does not.
*/}}
{{- define "fanout-consumer.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "fanout-consumer.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the workers' default ServiceAccount: .Values.worker.serviceAccount.name, or
"<fullname>-worker" when the chart creates it, or empty (the namespace's "default") when it does not.
*/}}
{{- define "fanout-consumer.workerServiceAccountName" -}}
{{- if .Values.worker.serviceAccount.create }}
{{- default (include "fanout-consumer.componentName" (dict "root" . "component" "worker")) .Values.worker.serviceAccount.name }}
{{- else }}
{{- .Values.worker.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ClusterKopfPeering object the operator replicas coordinate through.
*/}}
{{- define "fanout-consumer.peeringName" -}}
{{- default (include "fanout-consumer.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/*
The IRSA role annotation's value: the given roleArn when awsIdentity is irsa, else empty (with
EKS Pod Identity the role is bound by an association, not by an annotation).
Call with (dict "root" $ "roleArn" .Values.operator.serviceAccount.roleArn).
*/}}
{{- define "fanout-consumer.irsaRoleArn" -}}
{{- if eq .root.Values.awsIdentity "irsa" }}{{ .roleArn }}{{- end }}
{{- end }}
