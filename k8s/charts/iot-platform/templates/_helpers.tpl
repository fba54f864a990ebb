{{/*
The platform's services: the values key of each, its binary (also its
component label and the suffix of its objects' names), the prefix of its
settings in the environment and its ports.
*/}}
{{- define "iot.services" -}}
deviceRegistry: {name: device-registry, env: DEVICE_REGISTRY, grpc: 50051, admin: 9101}
ingestWriter: {name: ingest-writer, env: INGEST_WRITER, grpc: 50052, admin: 9102}
alertEngine: {name: alert-engine, env: ALERT_ENGINE, grpc: 50053, admin: 9103}
mqttGateway: {name: mqtt-gateway, env: MQTT_GATEWAY, grpc: 50054, admin: 9104, http: 8088}
graphqlGateway: {name: graphql-gateway, env: GRAPHQL_GATEWAY, grpc: 50055, admin: 9105, http: 8080}
{{- end -}}

{{- define "iot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one service's objects: (list $ "device-registry"). */}}
{{- define "iot.name" -}}
{{- printf "%s-%s" (include "iot.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{- define "iot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iot-platform
{{- end -}}

{{/* Selector labels of one service's pods: (list $ "device-registry"). */}}
{{- define "iot.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image of one service: (list $ $svcValues). */}}
{{- define "iot.image" -}}
{{- $ := index . 0 -}}
{{- $img := (index . 1).image -}}
{{- $repo := $img.repository | default $.Values.image.repository -}}
{{- $tag := $img.tag | default $.Values.image.tag | default $.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "iot.pullPolicy" -}}
{{- $ := index . 0 -}}
{{- (index . 1).image.pullPolicy | default $.Values.image.pullPolicy -}}
{{- end -}}

{{/* Pod Security "restricted", pod level. */}}
{{- define "iot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod Security "restricted", container level; the root file system is
read-only (the image's user writes only to /tmp, an emptyDir). */}}
{{- define "iot.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "iot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "iot.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
The database URL: host and the rest from values, the password from the
Secret through the IOT_DB_PASSWORD variable, which "iot.dbEnv" defines
first (Kubernetes expands $(VAR) in a later variable's value).
*/}}
{{- define "iot.databaseUrl" -}}
{{- $pg := .Values.postgresql -}}
{{- $params := list (printf "sslmode=%s" $pg.sslMode) -}}
{{- if $pg.tls.caSecret.name -}}
{{- $params = append $params "sslrootcert=/etc/iot/postgresql/ca.crt" -}}
{{- end -}}
{{- printf "postgres://%s:$(IOT_DB_PASSWORD)@%s:%d/%s?%s" $pg.username $pg.host (int $pg.port) $pg.database (join "&" $params) -}}
{{- end -}}

{{- define "iot.dbPasswordEnv" -}}
- name: IOT_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret }}
      key: {{ .Values.postgresql.passwordKey }}
{{- end -}}

{{/*
Kafka settings of one service: (list $ "INGEST_WRITER"). Security settings
go through the services' pass-through librdkafka properties
(<PREFIX>__KAFKA__PROPERTIES, one inline table).
*/}}
{{- define "iot.kafkaEnv" -}}
{{- $ := index . 0 -}}
{{- $p := index . 1 -}}
{{- $k := $.Values.kafka -}}
{{- if $k.sasl.enabled }}
- name: IOT_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $k.sasl.existingSecret }}, key: {{ $k.sasl.usernameKey }}}
- name: IOT_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $k.sasl.existingSecret }}, key: {{ $k.sasl.passwordKey }}}
{{- end }}
- name: {{ $p }}__KAFKA__BROKERS
  value: {{ $k.brokers | quote }}
- name: {{ $p }}__KAFKA__READINGS_TOPIC
  value: {{ $k.topics.readings | quote }}
- name: {{ $p }}__KAFKA__DEAD_LETTER_TOPIC
  value: {{ $k.topics.deadLetter | quote }}
- name: {{ $p }}__KAFKA__PARTITIONS
  value: {{ $k.topics.partitions | quote }}
- name: {{ $p }}__KAFKA__REPLICATION
  value: {{ $k.topics.replicationFactor | quote }}
{{- if $k.topics.minInsyncReplicas }}
- name: {{ $p }}__KAFKA__MIN_INSYNC_REPLICAS
  value: {{ $k.topics.minInsyncReplicas | quote }}
{{- end }}
{{- $props := dict -}}
{{- if ne $k.securityProtocol "PLAINTEXT" -}}
{{- $_ := set $props "security.protocol" $k.securityProtocol -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism -}}
{{- $_ := set $props "sasl.username" "$(IOT_KAFKA_SASL_USERNAME)" -}}
{{- $_ := set $props "sasl.password" "$(IOT_KAFKA_SASL_PASSWORD)" -}}
{{- end -}}
{{- if $k.tls.caSecret.name -}}
{{- $_ := set $props "ssl.ca.location" "/etc/iot/kafka/ca.crt" -}}
{{- end -}}
{{- range $key, $v := $k.properties -}}
{{- $_ := set $props $key (toString $v) -}}
{{- end -}}
{{- if $props }}
- name: {{ $p }}__KAFKA__PROPERTIES
  value: {{ include "iot.inlineTable" $props | quote }}
{{- end }}
{{- end -}}

{{/* A map as an inline table of quoted strings: {"a.b"="c", ...}. */}}
{{- define "iot.inlineTable" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" ($k | toJson) ($v | toString | toJson)) -}}
{{- end -}}
{{- printf "{%s}" (join ", " $pairs) -}}
{{- end -}}

{{/* Variables every service gets. */}}
{{- define "iot.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: LOG_FORMAT
  value: json
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- end }}
{{- end -}}

{{/*
TLS to the MQTT broker, for a service's MQTT settings under (list $ prefix):
the CA of `mqtt.tls.caSecret`, mounted by iot.volumes.
*/}}
{{- define "iot.mqttTlsEnv" -}}
{{- $ := index . 0 -}}
{{- $prefix := index . 1 -}}
{{- with $.Values.mqtt.tls }}
{{- if .enabled }}
{{- if not .caSecret.name }}
{{- fail "mqtt.tls.enabled needs mqtt.tls.caSecret.name (the CA that signed the broker's certificate)" }}
{{- end }}
- name: {{ $prefix }}__TLS__ENABLED
  value: "true"
- name: {{ $prefix }}__TLS__CA_FILE
  value: /etc/iot/mqtt/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes for the CA certificates the values name, and /tmp. */}}
{{- define "iot.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.postgresql.tls.caSecret }}
{{- if .name }}
- name: postgresql-ca
  secret:
    secretName: {{ .name }}
    items: [{key: {{ .key }}, path: ca.crt}]
{{- end }}
{{- end }}
{{- with .Values.kafka.tls.caSecret }}
{{- if .name }}
- name: kafka-ca
  secret:
    secretName: {{ .name }}
    items: [{key: {{ .key }}, path: ca.crt}]
{{- end }}
{{- end }}
{{- with .Values.mqtt.tls.caSecret }}
{{- if .name }}
- name: mqtt-ca
  secret:
    secretName: {{ .name }}
    items: [{key: {{ .key }}, path: ca.crt}]
{{- end }}
{{- end }}
{{- end -}}

{{- define "iot.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.postgresql.tls.caSecret.name }}
- name: postgresql-ca
  mountPath: /etc/iot/postgresql
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/iot/kafka
  readOnly: true
{{- end }}
{{- if .Values.mqtt.tls.caSecret.name }}
- name: mqtt-ca
  mountPath: /etc/iot/mqtt
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The pod template of one service: (dict "root" $ "key" "deviceRegistry"
"env" <its own variables, YAML> "readinessPath" ... "readinessPort" ...).
*/}}
{{- define "iot.podTemplate" -}}
{{- $ := .root -}}
{{- $svc := index (include "iot.services" $ | fromYaml) .key -}}
{{- $v := index $.Values .key -}}
metadata:
  labels:
    {{- include "iot.componentLabels" (list $ $svc.name) | nindent 4 }}
  {{- with $.Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "iot.serviceAccountName" $ }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $.Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "iot.podSecurityContext" $ | nindent 4 }}
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $svc.name }}
      image: {{ include "iot.image" (list $ $v) }}
      imagePullPolicy: {{ include "iot.pullPolicy" (list $ $v) }}
      command: [{{ $svc.name }}]
      env:
        {{- include "iot.commonEnv" $ | nindent 8 }}
        - name: {{ $svc.env }}__ADMIN_ADDR
          value: "0.0.0.0:{{ $svc.admin }}"
        - name: {{ $svc.env }}__GRPC_ADDR
          value: "0.0.0.0:{{ $svc.grpc }}"
        {{- include "iot.grpcTlsEnv" (list $ .key) | nindent 8 }}
        {{- .env | nindent 8 }}
        {{- range $name, $value := $v.extraEnv }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
      ports:
        - {name: grpc, containerPort: {{ $svc.grpc }}}
        - {name: admin, containerPort: {{ $svc.admin }}}
        {{- if $svc.http }}
        - {name: http, containerPort: {{ $svc.http }}}
        {{- end }}
      readinessProbe:
        httpGet: {path: {{ .readinessPath }}, port: {{ .readinessPort }}}
        {{- toYaml $.Values.probes.readiness | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: admin}
        {{- toYaml $.Values.probes.liveness | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- include "iot.containerSecurityContext" $ | nindent 8 }}
      volumeMounts:
        {{- include "iot.volumeMounts" $ | nindent 8 }}
        {{- if eq .key "ingestWriter" }}
        {{- include "iot.archive.volumeMounts" $ | nindent 8 }}
        {{- end }}
        {{- if $.Values.grpcTls.enabled }}
        - name: grpc-tls
          mountPath: /etc/iot/grpc
          readOnly: true
        {{- end }}
  volumes:
    {{- include "iot.volumes" $ | nindent 4 }}
    {{- if eq .key "ingestWriter" }}
    {{- include "iot.archive.volumes" $ | nindent 4 }}
    {{- end }}
    {{- if $.Values.grpcTls.enabled }}
    # This service's gRPC certificate, key and CA (grpcTls).
    - name: grpc-tls
      secret:
        secretName: {{ include "iot.grpcTlsSecret" (list $ .key) }}
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
          - {key: ca.crt, path: ca.crt}
        defaultMode: 288 # 0440: the owner and the pod's group (fsGroup)
    {{- end }}
{{- end -}}

{{/* The common labels and one service's component: (list $ "device-registry"). */}}
{{- define "iot.componentLabels" -}}
{{ include "iot.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
The platform's own gRPC identities (iot_proto::PLATFORM_IDENTITIES): the
common names that may ask for every owner.
*/}}
{{- define "iot.platformIdentities" -}}
[device-registry, ingest-writer, alert-engine, mqtt-gateway, graphql-gateway, iotctl]
{{- end -}}

{{/*
The Secret with one service's gRPC certificate, (list $ "deviceRegistry"):
grpcTls.existingSecrets.<key>, else the one the chart's cert-manager
Certificate writes, else empty.
*/}}
{{- define "iot.grpcTlsSecret" -}}
{{- $ := index . 0 -}}
{{- $key := index . 1 -}}
{{- $t := $.Values.grpcTls -}}
{{- $svc := index (include "iot.services" $ | fromYaml) $key -}}
{{- if index $t.existingSecrets $key -}}
{{- index $t.existingSecrets $key -}}
{{- else if $t.certManager.enabled -}}
{{- printf "%s-grpc-tls" (include "iot.name" (list $ $svc.name)) -}}
{{- end -}}
{{- end -}}

{{/*
The DNS names other services dial one service at, (list $ "device-registry"):
its Service's names (iot.url dials <name>.<namespace>.svc).
*/}}
{{- define "iot.grpcDnsNames" -}}
{{- $ := index . 0 -}}
{{- $n := include "iot.name" (list $ (index . 1)) -}}
{{- $ns := $.Release.Namespace -}}
- {{ $n }}
- {{ $n }}.{{ $ns }}
- {{ $n }}.{{ $ns }}.svc
- {{ $n }}.{{ $ns }}.svc.cluster.local
{{- end -}}

{{/*
mTLS settings of one service's gRPC server and clients, (list $ "deviceRegistry"):
the files of its Secret, mounted at /etc/iot/grpc by iot.podTemplate.
*/}}
{{- define "iot.grpcTlsEnv" -}}
{{- $ := index . 0 -}}
{{- $key := index . 1 -}}
{{- $t := $.Values.grpcTls -}}
{{- $svc := index (include "iot.services" $ | fromYaml) $key -}}
{{- if $t.enabled }}
{{- if not (include "iot.grpcTlsSecret" (list $ $key)) }}
{{- fail (printf "grpcTls.enabled: %s has no certificate; set grpcTls.existingSecrets.%s (a Secret with tls.crt, tls.key and ca.crt) or grpcTls.certManager.enabled" $svc.name $key) }}
{{- end }}
- name: {{ $svc.env }}__GRPC_TLS__CERT
  value: /etc/iot/grpc/tls.crt
- name: {{ $svc.env }}__GRPC_TLS__KEY
  value: /etc/iot/grpc/tls.key
- name: {{ $svc.env }}__GRPC_TLS__CA
  value: /etc/iot/grpc/ca.crt
{{- with $t.platformIdentities }}
{{- $ids := list }}
{{- range concat (include "iot.platformIdentities" $ | fromYamlArray) . }}
{{- $ids = append $ids (toJson .) }}
{{- end }}
# The platform's own identities and grpcTls.platformIdentities.
- name: {{ $svc.env }}__GRPC_TLS__PLATFORM_IDENTITIES
  value: {{ printf "[%s]" (join ", " (uniq $ids)) | quote }}
{{- end }}
{{- end }}
{{- end -}}
