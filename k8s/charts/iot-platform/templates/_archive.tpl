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
- name: INGEST_WRITER__RETENTION__ARCHIVE__ENABLED
  value: {{ .Values.ingestWriter.archive.enabled | quote }}
- name: INGEST_WRITER__RETENTION__ARCHIVE__DIR
  value: /var/lib/iot-platform/archive
{{- end -}}
