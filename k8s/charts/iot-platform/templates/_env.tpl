{{/*
Each service's own settings, as environment variables its config accepts
(<PREFIX>__<SECTION>__<KEY>; see the services' config.rs). The chart's test
(crates/iot-testkit/tests/deploy_configs.rs) loads every rendered service's
environment through its config.
*/}}

{{- define "iot.env.deviceRegistry" -}}
{{ include "iot.dbPasswordEnv" . }}
- name: DEVICE_REGISTRY__DATABASE_URL
  value: {{ include "iot.databaseUrl" . | quote }}
- name: DEVICE_REGISTRY__POOL_SIZE
  value: {{ .Values.deviceRegistry.poolSize | quote }}
- name: DEVICE_REGISTRY__BROKER__ENABLED
  value: {{ .Values.mqtt.provisionDeviceAccounts | quote }}
- name: DEVICE_REGISTRY__BROKER__HOST
  value: {{ .Values.mqtt.host | quote }}
- name: DEVICE_REGISTRY__BROKER__PORT
  value: {{ .Values.mqtt.port | quote }}
{{- include "iot.mqttTlsEnv" (list . "DEVICE_REGISTRY__BROKER") }}
- name: DEVICE_REGISTRY__BROKER__USERNAME
  value: {{ .Values.mqtt.adminUsername | quote }}
- name: DEVICE_REGISTRY__BROKER__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.mqtt.existingSecret }}, key: {{ .Values.mqtt.adminPasswordKey }}}
# Each replica has its own admin session with the broker.
- name: DEVICE_REGISTRY__BROKER__CLIENT_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- end -}}

{{- define "iot.env.ingestWriter" -}}
{{ include "iot.dbPasswordEnv" . }}
- name: INGEST_WRITER__DATABASE_URL
  value: {{ include "iot.databaseUrl" . | quote }}
- name: INGEST_WRITER__POOL_SIZE
  value: {{ .Values.ingestWriter.poolSize | quote }}
{{- include "iot.kafkaEnv" (list . "INGEST_WRITER") }}
# Static group membership under the pod's name: a container that crashes
# and restarts in its pod takes its partitions back at once.
- name: INGEST_WRITER__INSTANCE_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{ include "iot.archive.env" . }}
{{- end -}}

{{- define "iot.env.alertEngine" -}}
{{ include "iot.dbPasswordEnv" . }}
- name: ALERT_ENGINE__DATABASE_URL
  value: {{ include "iot.databaseUrl" . | quote }}
- name: ALERT_ENGINE__POOL_SIZE
  value: {{ .Values.alertEngine.poolSize | quote }}
{{- include "iot.kafkaEnv" (list . "ALERT_ENGINE") }}
- name: ALERT_ENGINE__INSTANCE_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: ALERT_ENGINE__REGISTRY_URL
  value: {{ include "iot.url" (list . "deviceRegistry") }}
{{- with .Values.alertEngine.webhooks.allowPrivateAddresses }}
- name: ALERT_ENGINE__WEBHOOKS__ALLOW_PRIVATE_ADDRESSES
  value: "true"
{{- end }}
{{- end -}}

{{- define "iot.env.mqttGateway" -}}
{{- include "iot.kafkaEnv" (list . "MQTT_GATEWAY") }}
- name: MQTT_GATEWAY__HTTP_ADDR
  value: "0.0.0.0:8088"
- name: MQTT_GATEWAY__REGISTRY_URL
  value: {{ include "iot.url" (list . "deviceRegistry") }}
- name: MQTT_GATEWAY__MQTT__HOST
  value: {{ .Values.mqtt.host | quote }}
- name: MQTT_GATEWAY__MQTT__PORT
  value: {{ .Values.mqtt.port | quote }}
{{- include "iot.mqttTlsEnv" (list . "MQTT_GATEWAY__MQTT") }}
- name: MQTT_GATEWAY__MQTT__USERNAME
  value: {{ .Values.mqtt.gatewayUsername | quote }}
- name: MQTT_GATEWAY__MQTT__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.mqtt.existingSecret }}, key: {{ .Values.mqtt.gatewayPasswordKey }}}
- name: MQTT_GATEWAY__MQTT__MAX_PACKET_BYTES
  value: {{ .Values.mqtt.maxPacketBytes | quote }}
# Each replica keeps its own persistent MQTT session under its stable pod
# name, and handles the devices whose id hashes to its ordinal.
- name: MQTT_GATEWAY__MQTT__CLIENT_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MQTT_GATEWAY__MQTT__REPLICA
  valueFrom: {fieldRef: {fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']"}}
- name: MQTT_GATEWAY__MQTT__REPLICAS
  value: {{ .Values.mqttGateway.replicas | quote }}
{{- end -}}

{{- define "iot.env.graphqlGateway" -}}
{{- $a := .Values.graphqlGateway.auth }}
- name: GRAPHQL_GATEWAY__HTTP_ADDR
  value: "0.0.0.0:8080"
- name: GRAPHQL_GATEWAY__REGISTRY_URL
  value: {{ include "iot.url" (list . "deviceRegistry") }}
- name: GRAPHQL_GATEWAY__TELEMETRY_URL
  value: {{ include "iot.url" (list . "ingestWriter") }}
- name: GRAPHQL_GATEWAY__ALERTS_URL
  value: {{ include "iot.url" (list . "alertEngine") }}
- name: GRAPHQL_GATEWAY__INGEST_URL
  value: {{ include "iot.url" (list . "mqttGateway") }}
{{- if .Values.graphqlGateway.devMode }}
- name: GRAPHQL_GATEWAY__DEV_MODE
  value: "true"
{{- end }}
{{- if $a.jwt.enabled }}
- name: GRAPHQL_GATEWAY__AUTH__JWT__HS256_SECRET
  valueFrom:
    secretKeyRef: {name: {{ $a.jwt.existingSecret }}, key: {{ $a.jwt.hs256SecretKey }}}
- name: GRAPHQL_GATEWAY__AUTH__JWT__OWNER_CLAIM
  value: {{ $a.jwt.ownerClaim | quote }}
{{- with $a.jwt.issuer }}
- name: GRAPHQL_GATEWAY__AUTH__JWT__ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $a.jwt.audience }}
- name: GRAPHQL_GATEWAY__AUTH__JWT__AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with $a.apiKeys }}
{{- $keys := list }}
{{- range . }}
{{- $keys = append $keys (printf "{name=%s, owner=%s, sha256=%s}" (.name | toJson) (.owner | toJson) (.sha256 | toJson)) }}
{{- end }}
# Only the keys' SHA-256 digests: not secret.
- name: GRAPHQL_GATEWAY__AUTH__API_KEYS
  value: {{ printf "[%s]" (join ", " $keys) | quote }}
{{- end }}
{{- end -}}

{{/* The in-cluster gRPC URL of a service: (list $ "deviceRegistry"). */}}
{{- define "iot.url" -}}
{{- $ := index . 0 -}}
{{- $svc := index (include "iot.services" $ | fromYaml) (index . 1) -}}
{{- printf "http://%s.%s.svc:%v" (include "iot.name" (list $ $svc.name)) $.Release.Namespace $svc.grpc | quote -}}
{{- end -}}
