{{/* The release's base name: <release>, shortened to a DNS label. */}}
{{- define "edge.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "edge.robotId" -}}
{{- $id := required "robot.id is required: the robot this release runs on (one release per robot)" .Values.robot.id -}}
{{- if has $id (list "planners" "orders") -}}
{{- fail (printf "robot.id %q is reserved for the cloud's topics (cobot/v1/%s/...): choose another" $id $id) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$" $id) -}}
{{- fail (printf "robot.id %q must be one topic level and a label value: letters, digits, '-', '_', '.', at most 63" $id) -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{- define "edge.labels" -}}
app.kubernetes.io/name: cobot-hybrid-edge
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cobot-hybrid
cobot-hybrid.io/robot: {{ include "edge.robotId" . | quote }}
{{- end -}}

{{- define "edge.selectorLabels" -}}
app.kubernetes.io/name: cobot-hybrid-edge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* registry/repository:tag, or registry/repository:tag@sha256:... when a digest is pinned. */}}
{{- define "edge.image" -}}
{{- $i := .Values.image -}}
{{- $name := $i.repository -}}
{{- if $i.registry }}{{ $name = printf "%s/%s" (trimSuffix "/" $i.registry) $i.repository }}{{ end -}}
{{- if $i.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $i.digest) -}}
{{- fail (printf "image.digest must be sha256:<64 hex>, not %q" $i.digest) -}}
{{- end -}}
{{- printf "%s:%s@%s" $name $i.tag $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $name $i.tag -}}
{{- end -}}
{{- end -}}

{{- define "edge.certsSecret" -}}
{{- .Values.secrets.certs | default (printf "%s-certs" (include "edge.fullname" .)) -}}
{{- end -}}

{{- define "edge.keysSecret" -}}
{{- .Values.secrets.keys | default (printf "%s-keys" (include "edge.fullname" .)) -}}
{{- end -}}

{{/* The parameter overrides every node reads after its shipped file (/etc/cobot_hybrid/edge.yaml). */}}
{{- define "edge.params" -}}
{{- $id := include "edge.robotId" . -}}
{{- $keys := list -}}
{{- range $keyId, $file := .Values.trustedPlannerKeys -}}
{{- $keys = append $keys (printf "%s=/etc/cobot_hybrid/keys/%s" $keyId $file) -}}
{{- end -}}
{{- $p := dict -}}
{{- $_ := set $p "bridge_node" (dict "robot_id" $id "broker_host" .Values.broker.host "broker_port" (int .Values.broker.port) "protocol" .Values.broker.protocol "data_dir" "/var/lib/cobot_hybrid" "tls_ca" "/etc/cobot_hybrid/certs/ca.crt" "tls_cert" (printf "/etc/cobot_hybrid/certs/%s.crt" $id) "tls_key" (printf "/etc/cobot_hybrid/certs/%s.key" $id) "cloud_public_keys" $keys) -}}
{{- $_ = set $p "detector_node" (dict "model" .Values.detector.model "cache_dir" .Values.detector.cacheDir) -}}
{{- range $node, $mine := .Values.overrides | default dict -}}
{{- $_ := set $p $node (mergeOverwrite (deepCopy (get $p $node | default dict)) $mine) -}}
{{- end -}}
{{- $out := dict -}}
{{- range $node, $params := $p -}}
{{- $_ := set $out (printf "/**/%s" $node) (dict "ros__parameters" $params) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
