"""Validates docker-compose.yml against the Compose specification's JSON
schema (taken from the docker-compose 1.29.2 wheel on PyPI, which carries
compose/config/compose_spec.json), then checks what the schema cannot:
every depends_on target is a service, and every service that others wait
on as healthy has a healthcheck.

usage: python validate_compose.py <compose_spec.json> <docker-compose.yml>
Run by `cargo xtask deploy-check` (and `cargo xtask test`)."""

import json
import sys

import jsonschema
import yaml


def main(schema_path: str, compose_path: str) -> int:
    with open(schema_path) as f:
        schema = json.load(f)
    with open(compose_path) as f:
        doc = yaml.safe_load(f)
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in jsonschema.Draft201909Validator(schema).iter_errors(doc)
    ]
    services = doc.get("services", {})
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {} for d in deps} if isinstance(deps, list) else deps
        for dep, cond in deps.items():
            if dep not in services:
                problems.append(f"services/{name}/depends_on: no service {dep!r}")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(
                    f"services/{name}/depends_on: {dep!r} is waited on as healthy but has no healthcheck"
                )
    for p in problems:
        print(f"{compose_path}: {p}")
    if not problems:
        print(f"{compose_path}: valid ({len(services)} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
