#!/usr/bin/env python3
"""Checks the deployment templates offline: every Kubernetes object in
deploy/k8s against the JSON schema of its kind (tests/fixtures/k8s-schemas,
strict: an unknown or misspelt field is an error), then what a schema
cannot see: the StatefulSet's service, selectors, probe ports, volume
mounts and config map all refer to something that exists; the pods
probe /health/live and /health/ready and keep the spool on a persistent
volume; the PodDisruptionBudget covers them. The compose file has the
three services. Prints one line per check and 'N passed, N failed'.

usage: check_deploy.py REPOSITORY_ROOT
"""

import json
import pathlib
import sys

import jsonschema
import yaml

root = pathlib.Path(sys.argv[1])
schemas = root / "tests/fixtures/k8s-schemas"
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {what}")
    else:
        failed += 1
        print(f"FAILED: {what}")


def load(name):
    return json.loads((schemas / name).read_text())


registry_schemas = {p.name: json.loads(p.read_text()) for p in schemas.glob("*.json")}


def validator(schema_name):
    schema = registry_schemas[schema_name]
    try:
        from referencing import Registry, Resource
    except ImportError:
        # jsonschema before 4.18 (Debian 12's) resolves $refs itself.
        resolver = jsonschema.RefResolver(base_uri="", referrer=schema, store=registry_schemas)
        return jsonschema.Draft202012Validator(schema, resolver=resolver)
    registry = Registry().with_resources(
        (name, Resource.from_contents(contents)) for name, contents in registry_schemas.items()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


SCHEMA_OF = {
    ("v1", "ConfigMap"): "ConfigMap-v1.json",
    ("v1", "Service"): "Service-v1.json",
    ("apps/v1", "StatefulSet"): "StatefulSet-apps-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "PodDisruptionBudget-policy-v1.json",
}

objects = []
for path in sorted((root / "deploy/k8s").glob("*.yaml")):
    for document in yaml.safe_load_all(path.read_text()):
        if document is None:
            continue
        kind = (document.get("apiVersion"), document.get("kind"))
        name = f"{path.name}: {kind[1]} {document.get('metadata', {}).get('name')}"
        schema = SCHEMA_OF.get(kind)
        check(schema is not None, f"{name}: a kind we have a schema for")
        if schema is None:
            continue
        errors = sorted(validator(schema).iter_errors(document), key=lambda e: list(e.path))
        for error in errors:
            print(f"  {'/'.join(map(str, error.path))}: {error.message}")
        check(not errors, f"{name}: valid against {schema}")
        objects.append(document)


def of_kind(kind):
    return [o for o in objects if o["kind"] == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


sets = of_kind("StatefulSet")
check(len(sets) == 1, "one StatefulSet")
for sts in sets:
    spec = sts["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    check(matches(spec["selector"]["matchLabels"], labels), "the StatefulSet selects its own pods")
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    governing = services.get(spec["serviceName"])
    check(governing is not None and governing["spec"].get("clusterIP") == "None",
          f"serviceName {spec['serviceName']} is a headless Service")
    for service in services.values():
        check(matches(service["spec"]["selector"], labels),
              f"Service {service['metadata']['name']} selects the pods")
    container = pod["spec"]["containers"][0]
    port_names = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for service in services.values():
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            check(target in port_names or target in port_names.values(),
                  f"Service {service['metadata']['name']} port {port['port']} targets a container port")
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"{probe} asks {path}")
        check(get.get("port") in port_names or get.get("port") in port_names.values(),
              f"{probe} uses a container port")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    for path, name in mounts.items():
        check(name in claims or name in volumes, f"mount {path} has a volume")
    check(mounts.get("/var/spool/empath") in claims, "the spool is a persistent volume claim")
    maps = {c["metadata"]["name"] for c in of_kind("ConfigMap")}
    for volume in volumes.values():
        if "configMap" in volume:
            check(volume["configMap"]["name"] in maps, f"config map {volume['configMap']['name']} exists")
    security = pod["spec"].get("securityContext", {})
    check(security.get("runAsNonRoot") is True and security.get("runAsUser", 0) != 0, "pods run as non-root")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(grace > 30, "the grace period outlasts shutdown_timeout_secs (30)")
    budgets = of_kind("PodDisruptionBudget")
    check(len(budgets) == 1 and matches(budgets[0]["spec"]["selector"]["matchLabels"], labels),
          "a PodDisruptionBudget covers the pods")

compose = yaml.safe_load((root / "deploy/docker/compose.yml").read_text())
check(set(compose.get("services", {})) == {"empath", "prometheus", "grafana"},
      "compose runs empath, prometheus and grafana")
for name, service in compose.get("services", {}).items():
    check(("image" in service) or ("build" in service), f"compose service {name} has an image")
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            check((root / "deploy/docker" / source).exists(), f"compose {name} mounts {source}, which exists")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
