"""Checks what `helm template` renders of k8s/charts/iot-platform.

usage: python validate_chart.py <chart dir> <rendered.yaml>=<monitoring on|off> ...
Run by `cargo xtask deploy-check` (and `cargo xtask test`) on the chart
rendered with its default values and with values-production.yaml.

For every rendered file:
- every object of a built-in kind validates, strictly (an unknown field
  fails), against the Kubernetes schemas (kubernetes-validate); the CRD
  kinds kubernetes-validate has no schema for (CRD_KINDS) get the structural
  checks below instead, and any other kind without a schema fails;
- every pod (Deployment, StatefulSet, Job) passes Pod Security "restricted"
  and the chart's own rules (read-only root file system, no token);
- readiness probes wait longer than the 2 s the /readyz checks take, and
  graphql-gateway's readiness does not wait on its backends;
- no workload an HPA or ScaledObject scales sets `replicas`;
- the migration Job is a pre-install/pre-upgrade hook with a TTL;
- a cert-manager Certificate (grpcTls) names, as commonName, the service
  that mounts its Secret, and that service's Service among its dnsNames;
- ServiceMonitor, PrometheusRule and the dashboard ConfigMaps are there
  when monitoring is on and absent when it is off;
- rules, dashboards and compose's prometheus.yml use the shared metric
  names (iot_grpc_server_..., never iot_registry_grpc_server_...).
Once: every key of values.yaml is in the chart's README.
"""

import glob
import json
import os
import re
import sys

import kubernetes_validate
import yaml

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("cert-manager.io/v1", "Certificate"),
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
ALERTS = {
    "IotKafkaConsumerLagHigh",
    "IotKafkaConsumerWithoutPartitions",
    "IotDeadLetterRateHigh",
    "IotGrpcServerErrorRateHigh",
}
# Values whose contents are the operator's (free-form maps and lists): the
# README documents the key, not what goes in it.
FREE_FORM = {
    "resources", "selector", "labels", "annotations", "podAnnotations",
    "nodeSelector", "affinity", "properties", "extraEnv", "requests", "limits",
}
# Shared metrics under a service's prefix: the names before the services
# exported `service` labels.
OLD_METRIC = re.compile(
    r"iot_(registry|writer|alerts|gateway|graphql)_(grpc_(server|client)|kafka|db_pool|device_cache)_"
)


def pod_problems(where, pod):
    p = []
    psc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        p.append(f"{where}: uses a host namespace")
    if pod.get("automountServiceAccountToken") is not False:
        p.append(f"{where}: mounts a service account token")
    for v in pod.get("volumes") or []:
        if "hostPath" in v:
            p.append(f"{where}: hostPath volume {v['name']}")
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    if not containers:
        p.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}

        def eff(key):
            return sc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            p.append(f"{cw}: runAsNonRoot is not true")
        if eff("runAsUser") == 0:
            p.append(f"{cw}: runs as user 0")
        if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            p.append(f"{cw}: seccompProfile is not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            p.append(f"{cw}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{cw}: readOnlyRootFilesystem is not true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            p.append(f"{cw}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            p.append(f"{cw}: adds capabilities {caps['add']}")
        if "resources" not in c or "requests" not in c["resources"]:
            p.append(f"{cw}: no resource requests")
        ready = c.get("readinessProbe")
        if ready is not None:
            path = (ready.get("httpGet") or {}).get("path")
            if path == "/readyz" and ready.get("timeoutSeconds", 1) < 3:
                p.append(f"{cw}: /readyz probe times out before its 2 s checks")
            if c.get("name") == "graphql-gateway" and path == "/readyz":
                p.append(f"{cw}: readiness waits on every backend (/readyz)")
    return p


def crd_problems(doc, by_kind):
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{kind} {name}"
    spec = doc.get("spec") or {}
    p = []
    if kind == "ServiceMonitor":
        if not (spec.get("selector") or {}).get("matchLabels"):
            p.append(f"{where}: no selector")
        eps = spec.get("endpoints") or []
        if not eps:
            p.append(f"{where}: no endpoints")
        ports = {pt.get("name") for s in by_kind.get("Service", []) for pt in s["spec"]["ports"]}
        for ep in eps:
            if ep.get("port") not in ports:
                p.append(f"{where}: endpoint port {ep.get('port')!r} is no Service's")
    elif kind == "PrometheusRule":
        names = []
        for g in spec.get("groups") or []:
            for r in g.get("rules") or []:
                if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                    p.append(f"{where}: rule {r.get('alert')} has no expr")
                if "alert" not in r:
                    p.append(f"{where}: a rule without alert name")
                if not re.fullmatch(r"([0-9]+[smh])+", str(r.get("for", "0s"))):
                    p.append(f"{where}: rule {r.get('alert')}: bad for {r.get('for')!r}")
                names.append(r.get("alert"))
        if len(names) != len(set(names)):
            p.append(f"{where}: duplicate alert names")
        if missing := ALERTS - set(names):
            p.append(f"{where}: missing alerts {sorted(missing)}")
    elif kind == "ScaledObject":
        target = spec.get("scaleTargetRef") or {}
        if target.get("name") not in {d["metadata"]["name"] for d in by_kind.get("Deployment", [])}:
            p.append(f"{where}: scales {target.get('name')!r}, no Deployment")
        for key in ("minReplicaCount", "maxReplicaCount"):
            if not isinstance(spec.get(key), int):
                p.append(f"{where}: {key} is not an integer")
        triggers = spec.get("triggers") or []
        if not triggers:
            p.append(f"{where}: no triggers")
        auths = {d["metadata"]["name"] for d in by_kind.get("TriggerAuthentication", [])}
        for t in triggers:
            meta = t.get("metadata") or {}
            if t.get("type") != "kafka":
                p.append(f"{where}: trigger type {t.get('type')!r}")
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if not isinstance(meta.get(key), str) or not meta[key]:
                    p.append(f"{where}: trigger metadata {key} missing (strings only)")
            ref = (t.get("authenticationRef") or {}).get("name")
            if ref is not None and ref not in auths:
                p.append(f"{where}: authenticationRef {ref!r} is not rendered")
    elif kind == "Certificate":
        # gRPC mTLS (grpcTls.certManager): the common name is the identity
        # of the service whose pods mount the Secret, the DNS names include
        # the Service name the others dial, both ends of a link use it.
        secret = spec.get("secretName")
        if not secret:
            p.append(f"{where}: no secretName")
        if not (spec.get("issuerRef") or {}).get("name"):
            p.append(f"{where}: no issuerRef.name")
        if missing := {"server auth", "client auth"} - set(spec.get("usages") or []):
            p.append(f"{where}: usages lack {sorted(missing)}")
        users = [
            c.get("name")
            for w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
            if any((v.get("secret") or {}).get("secretName") == secret
                   for v in w["spec"]["template"]["spec"].get("volumes") or [])
            for c in w["spec"]["template"]["spec"]["containers"]
        ]
        if len(users) != 1:
            p.append(f"{where}: Secret {secret!r} is mounted by {users}, not one service")
        elif spec.get("commonName") != users[0]:
            p.append(f"{where}: commonName {spec.get('commonName')!r} is not {users[0]!r}, the service mounting it")
        services = {
            s["metadata"]["name"] for s in by_kind.get("Service", [])
            if (s["metadata"].get("labels") or {}).get("app.kubernetes.io/component") in users
            and "iot-platform/headless" not in (s["metadata"].get("labels") or {})
        }
        dns = set(spec.get("dnsNames") or [])
        for svc in services:
            if not any(n == svc or n.startswith(svc + ".") for n in dns):
                p.append(f"{where}: dnsNames {sorted(dns)} lack Service {svc}")
    elif kind == "TriggerAuthentication":
        refs = spec.get("secretTargetRef") or []
        if not refs:
            p.append(f"{where}: no secretTargetRef")
        for r in refs:
            if not all(r.get(k) for k in ("parameter", "name", "key")):
                p.append(f"{where}: incomplete secretTargetRef {r}")
    return p


def check_rendered(path, monitoring, dashboards):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    validated = crds = 0
    for d in docs:
        where = f"{d['kind']} {d['metadata']['name']}"
        if (d["apiVersion"], d["kind"]) in CRD_KINDS:
            problems += crd_problems(d, by_kind)
            crds += 1
            continue
        try:
            kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
            validated += 1
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {'/'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {d['apiVersion']} {d['kind']} (add it to CRD_KINDS with checks)")
    # Pods.
    for d in docs:
        if d["kind"] in WORKLOADS:
            pod = d["spec"]["template"]["spec"]
            problems += pod_problems(f"{d['kind']} {d['metadata']['name']}", pod)
    # Autoscaled workloads leave replicas to the autoscaler.
    scaled = [
        (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"], h["kind"])
        for h in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", [])
    ]
    for kind, name, by in scaled:
        targets = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
        if not targets:
            problems.append(f"{by} targets {kind} {name}, which is not rendered")
        for t in targets:
            if "replicas" in t["spec"]:
                problems.append(f"{kind} {name}: sets replicas while a {by} scales it")
    if len(scaled) != len({(k, n) for k, n, _ in scaled}):
        problems.append("a workload has two autoscalers")
    # The migration hook.
    hooks = [
        j for j in by_kind.get("Job", [])
        if {"pre-install", "pre-upgrade"} <= set(
            (j["metadata"].get("annotations") or {}).get("helm.sh/hook", "").split(","))
    ]
    if len(hooks) != 1:
        problems.append(f"{len(hooks)} pre-install,pre-upgrade hook Jobs, not 1")
    for j in hooks:
        ann = j["metadata"]["annotations"]
        if "helm.sh/hook-delete-policy" not in ann:
            problems.append("migration Job: no hook-delete-policy")
        if "ttlSecondsAfterFinished" not in j["spec"]:
            problems.append("migration Job: no ttlSecondsAfterFinished")
        cmd = j["spec"]["template"]["spec"]["containers"][0].get("command")
        if cmd != ["iotctl", "migrate"]:
            problems.append(f"migration Job runs {cmd}")
    # Monitoring objects follow their toggles.
    boards = [
        c for c in by_kind.get("ConfigMap", [])
        if (c["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"
    ]
    found = {
        "ServiceMonitor": len(by_kind.get("ServiceMonitor", [])),
        "PrometheusRule": len(by_kind.get("PrometheusRule", [])),
        "dashboard ConfigMap": len(boards),
    }
    want = {"ServiceMonitor": 1, "PrometheusRule": 1, "dashboard ConfigMap": len(dashboards)}
    for what, n in found.items():
        expected = want[what] if monitoring else 0
        if n != expected:
            problems.append(f"{n} {what}(s) with monitoring {'on' if monitoring else 'off'}, not {expected}")
    for c in boards:
        for key, text in c["data"].items():
            if json.loads(text) != dashboards.get(key):
                problems.append(f"ConfigMap {c['metadata']['name']}: {key} is not the chart's dashboard")
    for r in by_kind.get("PrometheusRule", []):
        if m := OLD_METRIC.search(json.dumps(r)):
            problems.append(f"PrometheusRule: old metric name {m.group(0)}...")
    return problems, f"{len(docs)} objects, {validated} validated by kubernetes-validate --strict, {crds} CRD objects checked"


def keys(values, prefix=""):
    for k, v in values.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in FREE_FORM:
            yield from keys(v, path + ".")
        else:
            yield path


def main(chart, cases):
    problems = []
    dashboards = {}
    for f in sorted(glob.glob(os.path.join(chart, "dashboards", "*.json"))):
        with open(f) as fh:
            dashboards[os.path.basename(f)] = json.load(fh)
        if m := OLD_METRIC.search(json.dumps(dashboards[os.path.basename(f)])):
            problems.append(f"{f}: old metric name {m.group(0)}...")
    prometheus_yml = os.path.join(chart, "../../../deploy/compose/prometheus.yml")
    with open(prometheus_yml) as fh:
        if m := OLD_METRIC.search(fh.read()):
            problems.append(f"deploy/compose/prometheus.yml: old metric name {m.group(0)}...")
    with open(os.path.join(chart, "values.yaml")) as fh:
        values = yaml.safe_load(fh)
    with open(os.path.join(chart, "README.md")) as fh:
        readme = fh.read()
    for k in keys(values):
        if f"`{k}`" not in readme:
            problems.append(f"README.md: value `{k}` is not documented")
    for case in cases:
        path, _, monitoring = case.partition("=")
        p, summary = check_rendered(path, monitoring == "on", dashboards)
        problems += [f"{os.path.basename(path)}: {x}" for x in p]
        print(f"{os.path.basename(path)}: {summary}" + ("" if p else ", all checks passed"))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
