"""The Helm chart, rendered by the real helm binary and validated against Kubernetes schemas."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from arcly.protocols.http import LIVENESS_PATH, READINESS_PATH
from arcly_operator import permissions
from tests.helm_binary import find as find_helm
from tests.support.processes import REPO

CHART = REPO / "helm" / "arcly"
KUBE_VERSIONS = ["1.30", "1.33"]
CUSTOM_KINDS = {"ArclyCluster", "KopfPeering"}
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "external-redis": ["--set", "redis.bundled=false",
                       "--set", "redis.externalUrl=redis://:pw@redis.example:6379/0"],
    "external-redis-secret": ["--set", "redis.bundled=false",
                              "--set", "redis.existingSecret=my-redis"],
    "edges-without-hpa": ["--set", "edge.hpa.enabled=false", "--set", "edge.replicas=3",
                          "--set", "edge.pdb.enabled=false"],
    "otel-on": ["--set", "otel.enabled=true",
                "--set", "otel.endpoint=http://otel-collector:4317"],
    "recording-no-hls": ["--set", "origin.record.enabled=true", "--set", "hls.enabled=false"],
}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(find_helm(REPO / ".venv" / "bin" / "helm"))


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run([helm, "template", "demo", str(CHART), "--namespace", "media",
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_lint_passes(helm: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_manifest_validates(helm: str, name: str) -> None:
    docs = render(helm, *VALUE_SETS[name])
    assert {"StatefulSet", "Deployment", "Service", "Secret"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for crd in (CHART / "crds").glob("*.yaml"):
        kubernetes_validate.validate(yaml.safe_load(crd.read_text()), KUBE_VERSIONS[-1],
                                     strict=True)


def test_values_that_break_the_schema_are_rejected(helm: str, tmp_path: Path) -> None:
    for bad in ("edge:\n  hpa:\n    maxReplicas: many\n", "redis:\n  externalUrl: mysql://x\n",
                "typo: true\n", "logLevel: loud\n"):
        values = tmp_path / "bad.yaml"
        values.write_text(bad)
        result = subprocess.run([helm, "template", "demo", str(CHART), "-f", str(values)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, bad
        assert "schema" in result.stderr.lower(), result.stderr


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    granted: dict[tuple[str, str], frozenset[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] = frozenset(rule["verbs"])
    return granted


def test_operator_rbac_grants_exactly_what_the_operator_uses(helm: str) -> None:
    docs = render(helm)
    (role,) = _by_kind(docs, "Role")
    (cluster_role,) = _by_kind(docs, "ClusterRole")
    assert _rules(role) == permissions.NAMESPACED
    assert _rules(cluster_role) == permissions.CLUSTER
    for rule in role["rules"] + cluster_role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_edge_hpa_targets_the_edge_deployment(helm: str) -> None:
    docs = render(helm)
    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    edge = next(d for d in _by_kind(docs, "Deployment") if d["metadata"]["name"] == target["name"])
    assert target["kind"] == "Deployment"
    assert edge["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"
    assert "replicas" not in edge["spec"], "the HPA owns the edge replica count"
    (pdb,) = _by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == edge["spec"]["selector"]["matchLabels"]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _by_kind(docs, "Deployment") + _by_kind(docs, "StatefulSet")


def test_node_probes_hit_endpoints_the_node_serves(helm: str) -> None:
    docs = render(helm)
    nodes = [w for w in _workloads(docs)
             if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
             in ("origin", "edge")]
    assert len(nodes) == 2
    for workload in nodes:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
        assert container["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
        assert container["readinessProbe"]["httpGet"]["port"] == "http"
        assert f"--http-listen=0.0.0.0:{ports['http']}" in container["args"]
        assert container["lifecycle"]["preStop"]["exec"]["command"]
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        drain = next(a for a in container["args"] if a.startswith("--drain-timeout="))
        assert float(drain.split("=")[1]) + 5 < grace, "drain fits in the grace period"


def test_pods_run_as_non_root(helm: str) -> None:
    for name, args in VALUE_SETS.items():
        for workload in _workloads(render(helm, *args)):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_origins_advertise_their_headless_service_address(helm: str) -> None:
    docs = render(helm)
    (origin,) = [s for s in _by_kind(docs, "StatefulSet") if "origin" in s["metadata"]["name"]]
    headless = origin["spec"]["serviceName"]
    assert any(s["metadata"]["name"] == headless and s["spec"]["clusterIP"] == "None"
               for s in _by_kind(docs, "Service"))
    args = origin["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--advertise-address=$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:7000" in args


def test_otel_settings_follow_values(helm: str) -> None:
    def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
        node = next(w for w in _workloads(docs) if "edge" in w["metadata"]["name"])
        return {e["name"]: e.get("value") for e in
                node["spec"]["template"]["spec"]["containers"][0]["env"]}

    off = env(render(helm))
    assert off.get("OTEL_SDK_DISABLED") == "true" and "OTEL_EXPORTER_OTLP_ENDPOINT" not in off
    on = env(render(helm, *VALUE_SETS["otel-on"]))
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
