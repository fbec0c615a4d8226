{{- define "cloud.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "cloud.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cobot-hybrid
cobot-hybrid.io/fleet: {{ .Values.fleetId | quote }}
{{- end -}}

{{/* An image reference from {registry, repository, tag, digest}: repo:tag or repo:tag@digest. */}}
{{- define "cloud.imageRef" -}}
{{- $name := .repository -}}
{{- if .registry }}{{ $name = printf "%s/%s" (trimSuffix "/" .registry) .repository }}{{ end -}}
{{- if .digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .digest) -}}
{{- fail (printf "image digest must be sha256:<64 hex>, not %q" .digest) -}}
{{- end -}}
{{- printf "%s:%s@%s" $name .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" $name .tag -}}
{{- end -}}
{{- end -}}

{{- define "cloud.brokerHost" -}}
{{- if .Values.broker.host -}}
{{- .Values.broker.host -}}
{{- else if .Values.broker.enabled -}}
{{- printf "%s-broker.%s.svc" (include "cloud.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "broker.host is required when broker.enabled is false (the external broker's address)" -}}
{{- end -}}
{{- end -}}

{{- define "cloud.plannerCerts" -}}
{{- .Values.secrets.plannerCerts | default (printf "%s-planner-certs" (include "cloud.fullname" .)) -}}
{{- end -}}
{{- define "cloud.plannerKey" -}}
{{- .Values.secrets.plannerKey | default (printf "%s-planner-key" (include "cloud.fullname" .)) -}}
{{- end -}}
{{- define "cloud.workerCerts" -}}
{{- .Values.secrets.workerCerts | default (printf "%s-worker-certs" (include "cloud.fullname" .)) -}}
{{- end -}}
{{- define "cloud.workerKey" -}}
{{- .Values.secrets.workerKey | default (printf "%s-worker-key" (include "cloud.fullname" .)) -}}
{{- end -}}
{{- define "cloud.historyCerts" -}}
{{- .Values.secrets.historyCerts | default (printf "%s-history-certs" (include "cloud.fullname" .)) -}}
{{- end -}}
{{- define "cloud.brokerCerts" -}}
{{- .Values.secrets.brokerCerts | default (printf "%s-broker-certs" (include "cloud.fullname" .)) -}}
{{- end -}}

{{/* The shipped mosquitto config, listening on every address of the pod instead of 127.0.0.1. */}}
{{- define "cloud.mosquittoConf" -}}
{{- $conf := .Files.Get "files/cobot_hybrid_tls.conf" -}}
{{- if not $conf }}{{ fail "files/cobot_hybrid_tls.conf (config/mosquitto/) is missing" }}{{ end -}}
{{- regexReplaceAll "(?m)^listener ([0-9]+) 127\\.0\\.0\\.1$" $conf "listener ${1}" -}}
{{- end -}}

{{/* checkov skips every workload of this chart shares, each with its reason. */}}
{{- define "cloud.checkovSkips" -}}
# - imagePullPolicy Always would make a restart depend on the registry; the references are
#   immutable (a version tag, pinned by digest in the fleet repository).
checkov.io/skip1: CKV_K8S_15=IfNotPresent on purpose; references are immutable (a version tag, a digest in the fleet repository)
{{- if not .digest }}
# - digest: a plain chart install uses the version tag (deploy/images.env for our images);
#   the fleet repository pins the digest.
checkov.io/skip2: CKV_K8S_43=the tag is the release version; the fleet repository pins the digest
{{- end }}
{{- end -}}

{{/* The cloud image's HEALTHCHECK command (deploy/images/Containerfile.cloud), as a JSON list. */}}
{{- define "cloud.plannerHealth" -}}
{{- toJson (list "cobot-hybrid" "planner-health") -}}
{{- end -}}

{{/* The pod security context every cloud workload shares. */}}
{{- define "cloud.podSecurity" -}}
runAsUser: 10001
runAsGroup: 10001
runAsNonRoot: true
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context every cloud workload shares. */}}
{{- define "cloud.containerSecurity" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}
