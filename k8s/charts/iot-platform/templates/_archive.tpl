{{/*
ingest-writer's cold storage (ingestWriter.archive): the archive
directory's volume, its mount and its settings. Every replica mounts the
same claim: maintenance runs in one replica at a time, and exports from any
replica read every file.
*/}}
{{- define "iot.archive.claimName" -}}
{{- .Values.ingestWriter.archive.volume.existingClaim | default (printf "%s-archive" (include "iot.fullname" .)) -}}
{{- end -}}

{{- define "iot.archive.volumes" -}}
{{- $vol := .Values.ingestWriter.archive.volume }}
{{- if eq $vol.type "persistentVolumeClaim" }}
- name: archive
  persistentVolumeClaim:
    claimName: {{ include "iot.archive.claimName" . }}
{{- else if eq $vol.type "emptyDir" }}
- name: archive
  emptyDir:
    sizeLimit: {{ $vol.size }}
{{- end }}
{{- end -}}

{{- define "iot.archive.volumeMounts" -}}
{{- if ne .Values.ingestWriter.archive.volume.type "none" }}
- name: archive
  mountPath: /var/lib/iot-platform/archive
{{- end }}
{{- end -}}

{{- define "iot.archive.env" -}}
{{- $a := .Values.ingestWriter.archive }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__ENABLED
  value: {{ $a.enabled | quote }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__DIR
  value: /var/lib/iot-platform/archive
- name: INGEST_WRITER__RETENTION__ARCHIVE__STORE
  value: {{ $a.store | quote }}
{{- if eq $a.store "s3" }}
{{- if not $a.s3.bucket }}
{{- fail "ingestWriter.archive.s3.bucket must be set when ingestWriter.archive.store is s3" }}
{{- end }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__S3__BUCKET
  value: {{ $a.s3.bucket | quote }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__S3__PREFIX
  value: {{ $a.s3.prefix | quote }}
{{- with $a.s3.endpoint }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__S3__ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $a.s3.region }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__S3__REGION
  value: {{ . | quote }}
{{- end }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__S3__ALLOW_HTTP
  value: {{ $a.s3.allowHttp | quote }}
{{- with $a.s3.credentialsSecret }}
{{- if .name }}
# The standard AWS variables, which the store reads when the config names
# no credentials: the secret stays out of the config.
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .accessKeyIdKey }}}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .secretAccessKeyKey }}}}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
