"""deploy/kubernetes: the Kustomize base, components and overlays, checked as a cluster and
the Prometheus Operator would take them.

- Each overlay is built with the real kustomize (``kubectl kustomize``, or a standalone
  ``kustomize build``): what ``kubectl apply -k`` would send.
- Every Kubernetes object validates in strict mode (unknown fields rejected) against the
  schemas ``kubernetes-validate`` ships, for the oldest and newest Kubernetes it knows
  (pinned below); the ServiceMonitor, PodMonitor and PrometheusRule validate against the
  Prometheus Operator's own CRD schemas (tests/deploy/schemas/prometheus-operator/), made
  strict the same way.
- The PrometheusRule is what deploy/kubernetes/generate.py makes from
  alerts/hiw_monitor.rules.yml, and its groups pass ``promtool check rules``.
- No password anywhere: only a secretKeyRef to a Secret the user creates.
- Security context, resources and probes on every container; selectors that select the
  pods; port names that agree; a NetworkPolicy that allows only what the agent needs; the
  shard count equal to the StatefulSet's replicas; the agent's config accepted by
  ``hiw-monitor validate-config``.

Under CI=true a missing kubectl (or kustomize) or promtool fails the test instead of
skipping it.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from tools import IN_CI, require

from hiw_monitor import __version__
from hiw_monitor.config import DEFAULT_PORT, ENV_LISTEN, ENV_SHARD
from hiw_monitor.discovery import parse as parse_targets
from hiw_monitor.shard import Shard, owner
from hiw_monitor.shard import parse as parse_shard

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "prometheus-operator"
OVERLAYS = ("single", "sharded")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# The oldest and the newest Kubernetes whose schemas kubernetes-validate ships (1.37.0 of
# the package): the manifests claim 1.25 and later.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
CRDS = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.v1.json",
    "PodMonitor": "monitoring.coreos.com_podmonitors.v1.json",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.v1.json",
}
IMAGE = "ghcr.io/heroes-in-waiting/hiw-monitor"
PORT_NAME = "metrics"
SECRET = {"name": "hiw-monitor-db", "key": "password"}
PASSWORD_ENV = "HIW_DB_PASSWORD"
CONFIG_DIR = "/etc/hiw-monitor/config"
RULES = ROOT / "alerts" / "hiw_monitor.rules.yml"


# --- building the overlays ------------------------------------------------------------


def _kustomize_command() -> list[str]:
    """``kubectl kustomize`` (kustomize is built into kubectl), else ``kustomize build``."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    message = ("neither kubectl nor kustomize found: install kubectl >= 1.27 "
               "(kustomize v5 built in) to build deploy/kubernetes")
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable


def _build_text(directory: Path) -> str:
    done = subprocess.run([*_kustomize_command(), str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kustomize {directory}: {done.stderr}"
    return done.stdout


@functools.cache
def _built(overlay: str) -> str:
    return _build_text(K8S / "overlays" / overlay)


def build(overlay: str) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k deploy/kubernetes/overlays/OVERLAY`` would send."""
    return [doc for doc in yaml.safe_load_all(_built(overlay)) if doc]


def one(docs: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def source_manifests() -> list[Path]:
    """Every Kubernetes object file in deploy/kubernetes (not the kustomizations, not the
    agent's config and targets, which become ConfigMaps)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or {"config", "targets"} & set(path.parts):
            continue
        files.append(path)
    return files


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_overlays_build_to_the_expected_objects(overlay):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in build(overlay))
    common = [("ConfigMap", "hiw-monitor-config"), ("NetworkPolicy", "hiw-monitor"),
              ("PrometheusRule", "hiw-monitor"), ("Service", "hiw-monitor"),
              ("ServiceAccount", "hiw-monitor")]
    expected = {
        "single": [("Deployment", "hiw-monitor"), ("ServiceMonitor", "hiw-monitor")],
        "sharded": [("ConfigMap", "hiw-monitor-targets"), ("PodMonitor", "hiw-monitor"),
                    ("StatefulSet", "hiw-monitor")],
    }[overlay]
    # the config's ConfigMap carries a hash of its content (an edit rolls the pods)
    names = sorted((kind, re.sub(r"^(hiw-monitor-config)-[a-z0-9]{10}$", r"\1", name))
                   for kind, name in kinds)
    assert names == sorted(common + expected)
    assert {d["metadata"].get("namespace") for d in build(overlay)} == {"monitoring"}
    # never a Secret: the user creates it (README), so no manifest can carry a password
    assert "Secret" not in {kind for kind, _ in kinds}


def test_every_source_manifest_is_in_a_build():
    """No file lies around unused: each one is a resource of the base, a component or an
    overlay, and ends up in some build."""
    built = {(d["kind"], d["metadata"]["name"]) for o in OVERLAYS for d in build(o)}
    for path in source_manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            assert (doc["kind"], doc["metadata"]["name"]) in built, path


# --- schemas --------------------------------------------------------------------------


def test_kubernetes_validate_ships_the_pinned_versions():
    shipped = kubernetes_validate.utils.all_versions()
    for version in KUBERNETES_VERSIONS:
        assert version in shipped, (
            f"kubernetes-validate {kubernetes_validate.__version__} has no {version} "
            f"schemas (it ships {shipped[0]} to {shipped[-1]}): change KUBERNETES_VERSIONS "
            "and the versions deploy/kubernetes/README.md claims")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_validate_strictly(overlay, version):
    checked = 0
    for doc in build(overlay):
        if doc["kind"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                        f"{exc.message} at {'.'.join(map(str, exc.absolute_path))}")
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_source_manifests_validate_strictly_on_their_own(version):
    """The files as written (before kustomize) are valid objects too: a user can read and
    apply any of them."""
    for path in source_manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] in CRDS:
                crd_validator(doc["kind"]).validate(doc)
            else:
                kubernetes_validate.validate(doc, version, strict=True)


def test_strict_kubernetes_validation_rejects_a_misspelt_field():
    """The validation above would catch a typo (it is not a schema that accepts anything)."""
    deployment = workload(build("single"))
    assert kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    broken = copy.deepcopy(deployment)
    security = broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readonlyRootFilesystem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with ``additionalProperties: false`` on every object schema that
    lists its properties and allows no others (what the API server's strict field
    validation enforces; without it, jsonschema accepts any unknown field)."""
    if not isinstance(schema, dict):
        return schema
    node = dict(schema)
    pattern = node.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        # Go's RE2 takes a flag anywhere (^(?i)(abort|warn)?$); Python only at the start
        node["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    if "properties" in node:
        node["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = _strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict(v) for v in node[key]]
    return node


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRD_SCHEMAS / CRDS[kind]).read_text())
    assert "prometheus-operator" in schema["$comment"]
    assert "v0.93.0" in schema["$comment"]
    strict = _strict(schema)
    jsonschema.Draft7Validator.check_schema(strict)
    return jsonschema.Draft7Validator(strict)


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def test_prometheus_operator_objects_validate_against_their_crds(overlay):
    found = []
    for doc in build(overlay):
        if doc["kind"] not in CRDS:
            continue
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=str)
        assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                            for e in errors]
        assert DNS_LABEL.fullmatch(doc["metadata"]["name"])
        found.append(doc["kind"])
    monitor = {"single": "ServiceMonitor", "sharded": "PodMonitor"}[overlay]
    assert sorted(found) == sorted(["PrometheusRule", monitor])


def test_crd_validation_rejects_a_misspelt_field():
    monitor = one(build("single"), "ServiceMonitor")
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # the field is `interval`
    assert not list(crd_validator("ServiceMonitor").iter_errors(monitor))
    assert list(crd_validator("ServiceMonitor").iter_errors(broken))
    rule = copy.deepcopy(one(build("single"), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"  # not a duration
    assert list(crd_validator("PrometheusRule").iter_errors(rule))


# --- the PrometheusRule ---------------------------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("hiw_k8s_generate", K8S / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_the_generated_one():
    generated = _generator().render()
    committed = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert committed == generated, (
        "deploy/kubernetes/base/prometheusrule.yaml is out of date: run "
        "python deploy/kubernetes/generate.py")
    # and it holds the rule file's groups, unchanged
    rules = yaml.safe_load(RULES.read_text())
    assert yaml.safe_load(committed)["spec"]["groups"] == rules["groups"]


def test_generate_check_mode_agrees():
    done = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_prometheusrule_groups_pass_promtool(tmp_path, overlay):
    promtool = require("promtool")
    rule = one(build(overlay), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --- no secrets -----------------------------------------------------------------------

SECRETISH = re.compile(r"pass(word|wd)?|secret|token|credential|private", re.IGNORECASE)
# a URI with a password in its user info: scheme://user:password@host
URI_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^@\s/'\"]+@", re.IGNORECASE)
# kubectl create secret ... --from-literal=KEY=VALUE with a value typed in, not a variable
LITERAL_SECRET = re.compile(r"--from-literal=[^=\s]+=(?![\"']?\$)")
ALLOWED_KEYS = {"password_env", "password_file", "secretKeyRef", "automountServiceAccountToken"}


def _walk(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry under ``node``."""
    found: list[tuple[str, str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, str(key), value))
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    return found


def _dicts(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node, *(d for value in node.values() for d in _dicts(value))]
    if isinstance(node, list):
        return [d for value in node for d in _dicts(value)]
    return []


def _no_secret_values(document: Any, where: str) -> None:
    for item in _dicts(document):  # an env entry (name:, value:) of a secret-looking name
        name = item.get("name")
        if isinstance(name, str) and SECRETISH.search(name):
            assert "value" not in item, f"{where}: {name} has a literal value"
    for path, key, value in _walk(document):
        if SECRETISH.search(key) and key not in ALLOWED_KEYS:
            # a secret-looking key may only name where the secret is, never hold one
            assert path.endswith(".secretKeyRef") or not isinstance(value, str | int), \
                f"{where}: {path}.{key} holds a literal value"
        if isinstance(value, str):
            assert not URI_PASSWORD.search(value), f"{where}: {path}.{key} has a password"


def test_no_literal_secret_in_any_file():
    files = [p for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        assert not URI_PASSWORD.search(text), f"{path}: a URI with a password"
        assert not LITERAL_SECRET.search(text), f"{path}: --from-literal with a literal value"
        assert not re.search(r"^\s*kind:\s*Secret\s*$", text, re.MULTILINE), path
        assert not re.search(r"\b(PGPASSWORD|HIW_DB_PASSWORD)=[^\s$\"']", text), path
        if path.suffix in (".yaml", ".yml", ".json"):
            for document in yaml.safe_load_all(text):
                _no_secret_values(document, str(path))


@pytest.mark.parametrize("planted", [
    {"env": [{"name": "PGPASSWORD", "value": "hunter2"}]},
    {"targets": [{"name": "db", "password": "hunter2"}]},
    {"targets": [{"dsn": "postgresql://hiw_monitor:hunter2@db:5432/hiw"}]},
    {"stringData": {"password": "hunter2"}},
])
def test_the_secret_scan_finds_a_planted_password(planted):
    with pytest.raises(AssertionError):
        _no_secret_values(planted, "planted")


def test_the_text_scan_finds_a_typed_in_password():
    assert LITERAL_SECRET.search("create secret generic x --from-literal=password=hunter2")
    assert not LITERAL_SECRET.search('--from-literal=password="$HIW_DB_PASSWORD"')
    assert URI_PASSWORD.search("dsn: postgresql://hiw_monitor:hunter2@db/hiw")
    assert not URI_PASSWORD.search("dsn: postgresql://hiw_monitor@db:5432/hiw")


def test_the_password_comes_only_from_a_secret_key_ref(overlay):
    docs = build(overlay)
    for doc in docs:
        _no_secret_values(doc, f"{overlay}: {doc['kind']}")
    pod = workload(docs)["spec"]["template"]["spec"]
    for container in containers(pod):
        for name, item in env_of(container).items():
            if SECRETISH.search(name):
                assert "value" not in item, f"{name} is a literal"
                assert set(item["valueFrom"]) == {"secretKeyRef"}, name
        assert env_of(container)[PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == SECRET
        assert "envFrom" not in container
    # the agent's config names the env var; no DSN or target carries a password
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key, text in cm["data"].items():
            content = yaml.safe_load(text)
            for path, name, value in _walk(content):
                assert name not in ("password", "sslpassword"), f"{cm['metadata']['name']} " \
                    f"{key}: {path}.{name}"
                if name == "dsn":
                    assert "password" not in conninfo_to_dict(value)
                if name == "password_env":
                    assert value == PASSWORD_ENV


# --- the pods: security context, resources, probes, image ----------------------------


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[:-2]) * factor
    return int(quantity)


def test_every_container_is_locked_down(overlay):
    pod = workload(build(overlay))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = pod["securityContext"]["runAsUser"]
    assert type(uid) is int
    assert uid > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), host
    for container in containers(pod):
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == uid
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security.get("privileged", False) is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for mount in container.get("volumeMounts", []):
            assert mount.get("readOnly") is True, mount


def test_the_uid_is_the_images_user(overlay):
    """runAsNonRoot can only check a numeric user: the pods run as the Dockerfile's."""
    dockerfile = ROOT / "Dockerfile"
    found = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile.read_text(), re.MULTILINE)
    assert found, "the Dockerfile's USER is not numeric"
    security = workload(build(overlay))["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] == int(found[1])
    if found[2]:
        assert security["runAsGroup"] == int(found[2])


def test_every_container_has_requests_and_limits(overlay):
    pod = workload(build(overlay))["spec"]["template"]["spec"]
    for container in containers(pod):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, (container["name"], kind)
        assert _cpu(resources["requests"]["cpu"]) <= _cpu(resources["limits"]["cpu"])
        assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])
        # from the measured peaks (docs/fleet.md, docs/performance.md): one target peaked
        # at 62 MiB, ten at 105.7 MiB; the request covers the peak of what the overlay is
        # sized for, the limit leaves room above it
        peak = {"single": 62, "sharded": 106}[overlay] * 2**20
        assert _bytes(resources["requests"]["memory"]) >= peak
        assert _bytes(resources["limits"]["memory"]) >= 2 * peak


def test_probes_and_image(overlay):
    docs = build(overlay)
    pod = workload(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE}:{__version__}"
    probes = {name: container[name]["httpGet"] for name in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": PORT_NAME}
    assert probes["startupProbe"] == {"path": "/healthz", "port": PORT_NAME}
    assert probes["readinessProbe"] == {"path": "/ready", "port": PORT_NAME}
    # the agent's heartbeat goes stale after 60 s; liveness gives it that and more
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if "app.kubernetes.io/version" in labels:
            assert labels["app.kubernetes.io/version"] == __version__, doc["kind"]


# --- selectors and ports --------------------------------------------------------------


def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _alert_job() -> str:
    """The job the agent-down alerts match (up{job="..."} in the rules)."""
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', RULES.read_text()))
    assert len(jobs) == 1, jobs
    return jobs.pop()


def test_selectors_select_the_agent_pods(overlay):
    docs = build(overlay)
    work = workload(docs)
    pod_labels = work["spec"]["template"]["metadata"]["labels"]
    selector = work["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert _subset(selector["matchLabels"], pod_labels)
    service = one(docs, "Service")
    assert _subset(service["spec"]["selector"], pod_labels)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    policy = one(docs, "NetworkPolicy")
    assert set(policy["spec"]["podSelector"]) == {"matchLabels"}
    assert _subset(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    if work["kind"] == "StatefulSet":
        assert work["spec"]["serviceName"] == service["metadata"]["name"]
    namespace = work["metadata"]["namespace"]
    for kind in ("ServiceMonitor", "PodMonitor"):
        for monitor in (d for d in docs if d["kind"] == kind):
            spec = monitor["spec"]
            assert set(spec["selector"]) == {"matchLabels"}
            assert monitor["metadata"]["namespace"] == namespace
            assert "namespaceSelector" not in spec  # its own namespace: the agent's
            selected = service["metadata"]["labels"] if kind == "ServiceMonitor" else pod_labels
            assert _subset(spec["selector"]["matchLabels"], selected), kind
            # job = the value of jobLabel on what it selects: the alerts' job
            assert selected[spec["jobLabel"]] == _alert_job()


def test_ports_are_named_consistently(overlay):
    docs = build(overlay)
    pod = workload(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"] == [
        {"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}]
    listen = env_of(container)[ENV_LISTEN]["value"]
    assert listen == f"0.0.0.0:{DEFAULT_PORT}"
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": PORT_NAME, "port": DEFAULT_PORT,
                                         "targetPort": PORT_NAME, "protocol": "TCP"}]
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [PORT_NAME]
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [PORT_NAME]
    for rule in one(docs, "NetworkPolicy")["spec"]["ingress"]:
        assert rule["ports"] == [{"port": PORT_NAME, "protocol": "TCP"}]


def test_network_policy_allows_only_prometheus_in_and_postgresql_and_dns_out(overlay):
    spec = one(build(overlay), "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    (peer,) = ingress["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    allowed = set()
    for rule in spec["egress"]:
        assert rule.get("ports"), "an egress rule without ports allows every port"
        for port in rule["ports"]:
            allowed.add((port["protocol"], port["port"]))
            if port["port"] == 53:
                (dns,) = rule["to"]
                assert dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert allowed == {("TCP", 5432), ("UDP", 53), ("TCP", 53)}


# --- the agent's config and the shards ------------------------------------------------


def _config_layout(docs: list[dict[str, Any]], root: Path) -> Path:
    """The ConfigMaps written out as the pod mounts them (config/ and targets/ side by
    side); the path of the config file the container is started with."""
    pod = workload(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["run", "--config"]
    config_file = args[2]
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    mounted = {}
    for mount in container["volumeMounts"]:
        data = maps[volumes[mount["name"]]]
        mounted[mount["mountPath"]] = data
        assert mount["mountPath"].startswith("/etc/hiw-monitor/")
        assert "subPath" not in mount  # a subPath mount never sees an update
        local = root / mount["mountPath"].removeprefix("/etc/hiw-monitor/")
        local.mkdir(parents=True)
        for key, text in data.items():
            (local / key).write_text(text)
    assert str(Path(config_file).parent) == CONFIG_DIR
    assert Path(config_file).name in mounted[CONFIG_DIR]
    return root / "config" / Path(config_file).name


def _validate_config(path: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "hiw-monitor"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hiw_monitor"]
    return subprocess.run([*command, "validate-config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_agent_config_passes_validate_config(overlay, tmp_path):
    docs = build(overlay)
    config = _config_layout(docs, tmp_path)
    done = _validate_config(config)
    assert done.returncode == 0, done.stdout + done.stderr
    if overlay == "single":
        assert ": OK: 1 target(s) (hiw-primary)" in done.stdout
    else:
        # the discovery files are found where the pod mounts them, and every entry is good
        assert "file_sd: 1 file(s) match" in done.stdout
        assert "6 target(s)" in done.stdout, done.stdout


def _pod_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it for pod ``pod_name``
    (secrets: a stand-in value; $(VAR) expanded from the entries before)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
        else:
            env[item["name"]] = "stand-in for the Secret"
    return env


def _on_loopback(root: Path) -> dict[str, str]:
    """The laid-out config and target files with every database host replaced by a closed
    port on 127.0.0.1 (the test's agent connects to nothing outside this machine); the
    original host of each new address."""
    renamed: dict[str, str] = {}
    hosts = re.compile(r"[\w.-]+\.svc\.cluster\.local:5432")
    for path in sorted(root.rglob("*.yaml")):
        text = path.read_text()
        for host in sorted(set(hosts.findall(text))):
            address = f"127.0.0.1:{len(renamed) + 1}"
            renamed[address] = host
            text = text.replace(host, address)
        path.write_text(text)
    return renamed


def _metrics_of_the_pod(tmp_path: Path, docs: list[dict[str, Any]], ordinal: int) -> str:
    """Start the agent as the workload's container would be started in pod ORDINAL (its
    args, its env, its config laid out as mounted; on a free loopback port) and return
    its /metrics once /healthz says it runs."""
    from hiw_monitor.demo.cluster import free_port

    config = _config_layout(docs, tmp_path / "etc")
    _on_loopback(tmp_path / "etc")
    work = workload(docs)
    (container,) = work["spec"]["template"]["spec"]["containers"]
    env = _pod_env(container, f"{work['metadata']['name']}-{ordinal}")
    port = free_port()
    env[ENV_LISTEN] = f"127.0.0.1:{port}"
    args = [str(config) if arg == f"{CONFIG_DIR}/{config.name}" else arg
            for arg in container["args"]]
    process = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", *args], env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
                    if "hiw_target_info{" in metrics:
                        return metrics
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the agent did not serve its targets' info within 60 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_deployment_pod_starts_the_agent_on_its_target(tmp_path):
    metrics = _metrics_of_the_pod(tmp_path, build("single"), 0)
    assert _watched(metrics) == ["hiw-primary"], metrics
    assert "hiw_shard_targets" not in metrics


def test_a_statefulset_pod_starts_the_agent_on_its_shard(tmp_path):
    """Pod hiw-monitor-1's agent, started with that pod's env and mounts, is shard 1/3
    and watches exactly the targets shard 1 owns."""
    docs = build("sharded")
    metrics = _metrics_of_the_pod(tmp_path, docs, 1)
    owned = re.search(r'^hiw_shard_targets\{shard="1/3"\} (\S+)$', metrics, re.MULTILINE)
    assert owned, metrics
    fleet = (tmp_path / "etc" / "targets" / "fleet.yaml").read_text()
    names = [t.name for t in parse_targets(fleet, "fleet.yaml", env={})]
    expected = sorted(name for name in names if owner(name, 3) == 1)
    assert float(owned[1]) == len(expected) >= 1
    assert _watched(metrics) == expected


def _watched(metrics: str) -> list[str]:
    """The targets an agent watches: those of its hiw_target_info series."""
    return sorted(set(re.findall(r'^hiw_target_info\{[^}]*\btarget="([^"]+)"', metrics,
                                 re.MULTILINE)))


def test_shard_index_and_count_come_from_the_pod_and_the_replicas():
    docs = build("sharded")
    stateful = one(docs, "StatefulSet")
    replicas = stateful["spec"]["replicas"]
    assert replicas == 3
    assert stateful["spec"]["podManagementPolicy"] == "Parallel"
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    names = [item["name"] for item in container["env"]]
    # $(POD_NAME) expands only if POD_NAME comes earlier in the list
    assert names.index("POD_NAME") < names.index(ENV_SHARD)
    env = env_of(container)
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    value = env[ENV_SHARD]["value"]
    assert value == f"$(POD_NAME)/{replicas}"
    # what each pod's agent gets, parsed by the agent's own parser
    name = stateful["metadata"]["name"]
    for index in range(replicas):
        expanded = value.replace("$(POD_NAME)", f"{name}-{index}")
        assert parse_shard(expanded) == Shard(index, replicas)


def test_changing_the_replicas_changes_the_shard_count(tmp_path):
    """The count is set in one place (the overlay's replicas): kustomize's replacement
    copies it into HIW_MONITOR_SHARD."""
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
    kustomization = copy_root / "overlays" / "sharded" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("count: 3") == 1
    kustomization.write_text(text.replace("count: 3", "count: 5"))
    docs = [d for d in yaml.safe_load_all(_build_text(kustomization.parent)) if d]
    stateful = one(docs, "StatefulSet")
    assert stateful["spec"]["replicas"] == 5
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    assert env_of(container)[ENV_SHARD]["value"] == "$(POD_NAME)/5"


def test_every_shard_of_the_example_fleet_owns_a_target():
    """The example fleet gives each of the default shards at least one target (a shard
    owning none is ready and idle: see the test below)."""
    docs = build("sharded")
    count = one(docs, "StatefulSet")["spec"]["replicas"]
    fleet = one(docs, "ConfigMap", "hiw-monitor-targets")["data"]
    names = [t.name for file, text in fleet.items() for t in parse_targets(text, file, env={})]
    assert len(names) == 6
    owners = [owner(name, count) for name in names]
    assert set(owners) == set(range(count)), owners


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # loopback only
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_shard_that_owns_no_target_is_ready(tmp_path):
    from hiw_monitor.demo.cluster import free_port

    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "fleet.yaml").write_text(
        '- targets: ["127.0.0.1:1"]\n  labels: {dbname: x, user: u}\n')
    (tmp_path / "hiw_monitor.yaml").write_text("file_sd:\n  files: [targets/*.yaml]\n")
    shard = f"{1 - owner('127.0.0.1:1/x', 2)}/2"  # the shard that does not own it
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "run", "--config",
         str(tmp_path / "hiw_monitor.yaml"), "--shard", shard, "--listen",
         f"127.0.0.1:{port}", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        status, body = _get(f"http://127.0.0.1:{port}/ready")
        assert status == 200, body
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- the README -----------------------------------------------------------------------


def test_readme_paths_exist_and_commands_name_the_overlays():
    text = (K8S / "README.md").read_text()
    for path in set(re.findall(r"deploy/kubernetes/[\w./-]+", text)):
        assert (ROOT / path.rstrip(".")).exists(), path
    for overlay_name in OVERLAYS:
        assert f"kubectl apply -k deploy/kubernetes/overlays/{overlay_name}" in text
    assert f"kubectl -n monitoring create secret generic {SECRET['name']}" in text


def test_readme_secret_command_makes_the_secret_the_pods_read():
    """The README's `kubectl create secret` line, run with --dry-run=client: the Secret it
    makes has the name, namespace and key the pods' secretKeyRef names, and the password
    as given (no newline added)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if IN_CI:
            pytest.fail("kubectl not found")
        pytest.skip("kubectl not found")
    lines = [line.strip() for line in (K8S / "README.md").read_text().splitlines()
             if "create secret generic" in line]
    assert len(lines) == 1, lines
    (command,) = lines
    done = subprocess.run(
        ["bash", "-c", f"{command} --dry-run=client -o json"], capture_output=True,
        text=True, timeout=60, check=False,
        env={"PATH": f"{Path(kubectl).parent}:/usr/bin:/bin", "HOME": "/nonexistent",
             PASSWORD_ENV: "test-only value"})
    assert done.returncode == 0, done.stderr
    secret = json.loads(done.stdout)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == SECRET["name"]
    assert secret["metadata"]["namespace"] == workload(build("single"))["metadata"]["namespace"]
    assert base64.b64decode(secret["data"][SECRET["key"]]) == b"test-only value"


def test_readme_image_step_points_the_overlay_at_your_registry(tmp_path):
    """Step 1's `cat >> .../kustomization.yaml` block, run on a copy: the overlay then
    pulls the image from the registry it names, with the version's tag."""
    text = (K8S / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^( *)```sh\n(.*?)^\1```", text,
                                      re.MULTILINE | re.DOTALL) if "cat >>" in b[1]]
    indent, body = block
    script = "\n".join(line.removeprefix(indent) for line in body.splitlines()) + "\n"
    shutil.copytree(K8S, tmp_path / "deploy" / "kubernetes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    overlay_dir = tmp_path / "deploy" / "kubernetes" / "overlays" / "single"
    docs = [d for d in yaml.safe_load_all(_build_text(overlay_dir)) if d]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"registry.example.com/hiw-monitor:{__version__}"


def _readme_example(marker: str) -> str:
    """The fenced YAML block of deploy/kubernetes/README.md whose first line is ``marker``."""
    text = (K8S / "README.md").read_text()
    for block in re.findall(r"^( *)```yaml\n(.*?)^\1```", text, re.MULTILINE | re.DOTALL):
        indent, body = block
        lines = [line.removeprefix(indent) for line in body.splitlines()]
        if lines and lines[0].startswith(marker):
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no YAML block starting with {marker!r} in the README")


def _own_overlay(tmp_path: Path, marker: str, overlay_name: str) -> list[dict[str, Any]]:
    """The README's own-overlay example, built against this checkout (its remote URL
    replaced by the path of the overlay here)."""
    own = tmp_path / "own"
    own.mkdir(exist_ok=True)
    text = _readme_example(marker)
    url = re.search(r"https://github\.com/\S+//deploy/kubernetes/overlays/(\w+)\?ref=\S+", text)
    assert url
    assert url[1] == overlay_name
    relative = Path(os.path.relpath(K8S / "overlays" / overlay_name, own))
    (own / "kustomization.yaml").write_text(text.replace(url[0], str(relative)))
    return [d for d in yaml.safe_load_all(_build_text(own)) if d]


def test_readme_own_overlay_for_one_database(tmp_path):
    docs = _prepared(tmp_path, "# my-hiw-monitor/kustomization.yaml", "single", {
        "hiw_monitor.yaml": "targets:\n  - name: mine\n    dsn: "
                            "postgresql://hiw_monitor@db.example:5432/hiw\n"
                            "    password_env: HIW_DB_PASSWORD\n"})
    config = one(docs, "ConfigMap", "hiw-monitor-config")
    assert "name: mine" in config["data"]["hiw_monitor.yaml"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"registry.example.com/hiw-monitor:{__version__}"
    assert pod["volumes"][0]["configMap"]["name"] == config["metadata"]["name"]
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_readme_own_overlay_for_a_fleet_keeps_the_shard_count(tmp_path):
    docs = _prepared(tmp_path, "# my-fleet/kustomization.yaml", "sharded", {
        "targets/fleet.yaml": '- targets: ["db1.example:5432"]\n  labels: {dbname: hiw}\n'})
    stateful = one(docs, "StatefulSet")
    assert stateful["spec"]["replicas"] == 5
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    assert env_of(container)[ENV_SHARD]["value"] == "$(POD_NAME)/5"
    assert "db1.example" in one(docs, "ConfigMap", "hiw-monitor-targets")["data"]["fleet.yaml"]


def _prepared(tmp_path: Path, marker: str, overlay_name: str,
              files: dict[str, str]) -> list[dict[str, Any]]:
    own = tmp_path / "own"
    for name, text in files.items():
        (own / name).parent.mkdir(parents=True, exist_ok=True)
        (own / name).write_text(text)
    return _own_overlay(tmp_path, marker, overlay_name)
