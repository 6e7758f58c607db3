"""The Helm chart, rendered by the real helm binary: validated against the Kubernetes schemas
for many value sets, read the way a platform engineer reads it before a production install
(secure defaults, placement, Pod Security "restricted", values that hold), and its rendered
origin and edge containers run as local processes against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from arcly.auth import tokens
from arcly.engine import FrameKind
from arcly.media.tsdemux import TsDemuxer
from arcly.protocols.http import LIVENESS_PATH, READINESS_PATH
from arcly.protocols.srt import libsrt
from arcly_operator import permissions
from tests.helm_binary import find as find_helm
from tests.support import webrtc
from tests.support.flv_reader import HttpFlvReader
from tests.support.processes import REPO, FfmpegPublisher, Node, RedisServer
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually

CHART = REPO / "helm" / "arcly"
KUBE_VERSIONS = ["1.30", "1.33"]
# Custom resources: kubernetes-validate has no schema for them (skipped by kind only).
CUSTOM_KINDS = {"ArclyCluster", "ServiceMonitor", "ScaledObject"}
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "external-redis-url": ["--set", "redis.bundled=false",
                           "--set", "redis.externalUrl=redis://redis.example:6379/0",
                           "--set", "redis.existingPasswordSecret=my-redis-password"],
    "external-redis-secret": ["--set", "redis.bundled=false",
                              "--set", "redis.existingSecret=my-redis"],
    "auth-inline": ["--set-string", "auth.config=[default]\nprovider = \"static\"\n"
                    "publish_keys_file = \"/keys/publish\"\n",
                    "--set", "origin.extraVolumes[0].name=keys",
                    "--set", "origin.extraVolumes[0].secret.secretName=publish-keys",
                    "--set", "origin.extraVolumeMounts[0].name=keys",
                    "--set", "origin.extraVolumeMounts[0].mountPath=/keys"],
    "auth-and-api-existing-secrets": ["--set", "auth.existingSecret=my-auth",
                                      "--set", "auth.existingTokenSecret=my-token-secret",
                                      "--set", "api.existingSecret=my-api",
                                      "--set", "relay.existingSecret=my-relay"],
    "relay-tls": ["--set", "relay.tls.enabled=true", "--set", "relay.tls.existingSecret=relay-tls"],
    "metrics-servicemonitor-keda": ["--set", "metrics.serviceMonitor.enabled=true",
                                    "--set", "metrics.serviceMonitor.labels.release=kps",
                                    "--set", "edge.keda.enabled=true"],
    "viewers-hpa": ["--set", "edge.hpa.metric=viewers",
                    "--set", "edge.hpa.targetViewersPerEdge=800"],
    "ingress": ["--set", "edge.ingress.enabled=true", "--set", "edge.ingress.className=nginx",
                "--set", "edge.ingress.hosts[0].host=live.example.com",
                "--set", "edge.ingress.tls[0].secretName=live-tls",
                "--set", "edge.ingress.tls[0].hosts[0]=live.example.com"],
    "recording-no-hls-otel-http": ["--set", "origin.record.enabled=true",
                                   "--set", "hls.enabled=false", "--set", "otel.enabled=true",
                                   "--set", "otel.endpoint=http://otel-collector:4318",
                                   "--set", "otel.protocol=http/protobuf"],
    "edges-without-hpa-no-netpol": ["--set", "edge.hpa.enabled=false", "--set", "edge.replicas=3",
                                    "--set", "edge.pdb.enabled=false",
                                    "--set", "networkPolicy.enabled=false",
                                    "--set", "metrics.enabled=false"],
    "every-option": [
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", "relay.tls.enabled=true", "--set", "relay.tls.existingSecret=relay-tls",
        "--set", "relay.tls.mutual=false",
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "edge.keda.enabled=true",
        "--set", "edge.ingress.enabled=true", "--set", "edge.ingress.hosts[0].host=live.example",
        "--set", "origin.record.enabled=true", "--set", "otel.enabled=true",
        "--set", "otel.endpoint=http://otel:4317",
        "--set", "origin.service.externalTrafficPolicy=Local",
        "--set", "origin.service.loadBalancerSourceRanges[0]=10.0.0.0/8",
        "--set", "edge.service.externalTrafficPolicy=Local",
        "--set", "edge.service.annotations.team=media",
        "--set", "origin.priorityClassName=media-critical",
        "--set", "edge.priorityClassName=media-critical",
        "--set", "operator.priorityClassName=media-critical",
        "--set", "redis.priorityClassName=media-critical",
        "--set", "origin.nodeSelector.pool=media", "--set", "edge.nodeSelector.pool=media",
        "--set", "operator.nodeSelector.pool=system", "--set", "redis.nodeSelector.pool=system",
        "--set", "operator.tolerations[0].key=system",
        "--set", "operator.tolerations[0].operator=Exists",
        "--set", "redis.tolerations[0].key=system", "--set", "redis.tolerations[0].operator=Exists",
        "--set", "edge.extraEnv[0].name=EXTRA", "--set-string", "edge.extraEnv[0].value=1",
        "--set", "operator.extraEnv[0].name=EXTRA", "--set-string", "operator.extraEnv[0].value=1",
        "--set", "edge.podAnnotations.team=media", "--set", "edge.podLabels.tier=edge",
        "--set", "redis.persistence.enabled=true", "--set", "operator.replicas=3",
        "--set", "global.imageRegistry=ignored"],
    "webrtc": ["--set", "webrtc.enabled=true",
               "--set", "webrtc.iceServers[0]=stun:stun.example.net:3478"],
    "webrtc-host-network-ice-secret": ["--set", "webrtc.enabled=true",
                                       "--set", "webrtc.expose=hostNetwork",
                                       "--set", "webrtc.udpPorts=20000-29999",
                                       "--set", "webrtc.iceServersSecret=turn-servers",
                                       "--set-json", "webrtc.consentTimeout=12.5"],
    "config-file": ["--set-string", "config=log_level = \"debug\"\n[apps.live]\n"
                    "fallback_stream = \"studio/slate\"\n"],
    "srt-passphrase": ["--set-string", "srt.passphrase=correct horse battery",
                       "--set", "srt.port=9000", "--set", "srt.latencyMs=400"],
    "srt-secret-separate-services": ["--set", "srt.passphraseSecret=srt-passphrase",
                                     "--set", "srt.separateService=true",
                                     "--set", "origin.service.externalTrafficPolicy=Local",
                                     "--set", "edge.service.annotations.team=media"],
}
# Value sets that open the node Pods to the host's network on purpose (webrtc.expose): those
# Pods leave Pod Security "restricted" for exactly that, and nothing else.
HOST_EXPOSURE = {"webrtc": "hostPort", "webrtc-host-network-ice-secret": "hostNetwork"}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(find_helm(REPO / ".venv" / "bin" / "helm"))


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, "template", "demo", str(CHART), "--namespace", "media", *args],
                          capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def default(helm: str) -> list[dict[str, Any]]:
    return render(helm)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")


def component(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_helm_lint_strict_passes(helm: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_value_set_renders_manifests_kubernetes_accepts(helm: str, name: str) -> None:
    docs = render(helm, *VALUE_SETS[name])
    assert {"StatefulSet", "Deployment", "Service"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for crd in (CHART / "crds").glob("*.yaml"):
        kubernetes_validate.validate(yaml.safe_load(crd.read_text()), KUBE_VERSIONS[-1],
                                     strict=True)
    for workload in workloads(docs):
        exposure = HOST_EXPOSURE.get(name) if component(workload) in ("origin", "edge") else None
        restricted(workload["spec"]["template"]["spec"], f"{name}: {workload['metadata']['name']}",
                   exposure)


def restricted(pod: dict[str, Any], where: str, exposure: str | None = None) -> None:
    """Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/
    pod-security-standards): what a Pod must and must not do. ``exposure`` (webrtc.expose)
    excuses UDP hostPorts equal to their container port, or hostNetwork: nothing more."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volumes, f"{where}: volume {volume}"
    for flag in ("hostPID", "hostIPC"):
        assert not pod.get(flag), f"{where}: {flag}"
    assert not pod.get("hostNetwork") or exposure == "hostNetwork", f"{where}: hostNetwork"
    pod_context = pod.get("securityContext", {})
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container.get("securityContext", {})
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
        assert context.get("runAsUser", pod_context.get("runAsUser")) != 0, where
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert not context.get("privileged"), where
        assert "ALL" in context.get("capabilities", {}).get("drop", []), where
        assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}
        for port in container.get("ports", []):
            assert "hostPort" not in port or (
                exposure == "hostPort" and port["protocol"] == "UDP"
                and port["hostPort"] == port["containerPort"]), f"{where}: {port}"


def test_values_that_break_the_schema_are_rejected(helm: str, tmp_path: Path) -> None:
    for bad in ("edge:\n  hpa:\n    maxReplicas: many\n", "redis:\n  externalUrl: mysql://x\n",
                "typo: true\n", "logLevel: loud\n", "origin:\n  terminationGracePeriodSeconds: 9\n",
                "otel:\n  protocol: http/json\n", "edge:\n  hpa:\n    metric: memory\n",
                "webrtc:\n  udpPorts: 40000:40099\n", "webrtc:\n  expose: nodePort\n",
                "webrtc:\n  consentTimeout: 0\n", "webrtc:\n  iceServers: [stun.example:3478]\n",
                "webrtc:\n  enable: true\n", "webrtc:\n  advertiseIp: node.example\n",
                "srt:\n  passphrase: too-short\n", f"srt:\n  passphrase: {'x' * 80}\n",
                "srt:\n  latencyMs: 20000\n", "srt:\n  port: 0\n", "srt:\n  listen: off\n"):
        values = tmp_path / "bad.yaml"
        values.write_text(bad)
        result = run_helm(helm, "-f", str(values))
        assert result.returncode != 0, bad
        assert "schema" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "redis.bundled=false"], "redis.externalUrl (or redis.existingSecret"),
    (["--set", "relay.tls.enabled=true"], "relay.tls.existingSecret"),
    (["--set", "edge.ingress.enabled=true"], "edge.ingress.hosts"),
    (["--set", "edge.keda.enabled=true"], "metrics.serviceMonitor.enabled or give edge.keda.query"),
    (["--set", "webrtc.enabled=true", "--set", "webrtc.udpPorts=40000-40500"],
     'webrtc.udpPorts "40000-40500" is 501 ports'),
    (["--set", "webrtc.enabled=true", "--set", "webrtc.udpPorts=40099-40000"],
     "webrtc.udpPorts"),
    (["--set", "webrtc.enabled=true", "--set", "webrtc.udpPorts=1000-1099"], "webrtc.udpPorts"),
    (["--set", "webrtc.enabled=true", "--set", "webrtc.iceServers[0]=stun:stun.example:3478",
      "--set", "webrtc.iceServersSecret=turn"], "webrtc.iceServersSecret both set"),
    (["--set", "webrtc.enabled=true",
      "--set", "webrtc.iceServers[0]=turn:user:hunter2@turn.example:3478"],
     "webrtc.iceServers: \"turn:user:***@turn.example:3478\" carries credentials"),
    (["--set-string", "srt.passphrase=correct horse battery",
      "--set", "srt.passphraseSecret=srt"], "srt.passphrase and srt.passphraseSecret both set"),
])
def test_values_that_cannot_work_fail_naming_the_value(helm: str, args: list[str],
                                                       message: str) -> None:
    result = run_helm(helm, *args)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_chart_works_as_a_subchart_with_global_values(helm: str) -> None:
    assert run_helm(helm, "--set", "global.storageClass=fast").returncode == 0


def test_default_render_is_closed_where_it_should_be(default: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p for p in by_kind(default, "NetworkPolicy")}
    assert set(policies) == {f"demo-arcly-{c}" for c in ("redis", "origin", "edge", "operator")}
    redis_from = policies["demo-arcly-redis"]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert redis_from["matchLabels"]["app.kubernetes.io/instance"] == "demo"
    origin_rules = policies["demo-arcly-origin"]["spec"]["ingress"]
    grpc_rule = next(r for r in origin_rules if {"port": "grpc", "protocol": "TCP"} in r["ports"])
    assert grpc_rule["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "edge", "the relay only from edges"
    # Publishing needs a signed token; the API needs a bearer token; Redis a password.
    (origin,) = [w for w in workloads(default) if component(w) == "origin"]
    container = origin["spec"]["template"]["spec"]["containers"][0]
    assert "--auth-config=/etc/arcly/auth/auth.toml" in container["args"]
    auth = named(default, "Secret", "-auth")
    assert 'provider = "tokens"' in base64.b64decode(auth["data"]["auth.toml"]).decode()
    env = env_of(container)
    for name in ("ARCLY_API_TOKEN", "ARCLY_RELAY_TOKEN", "ARCLY_TOKEN_SECRET",
                 "ARCLY_REDIS_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    (redis,) = [w for w in workloads(default) if component(w) == "redis"]
    redis_container = redis["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis_container["args"]
    assert env_of(redis_container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
        env["ARCLY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]


def test_no_secret_value_is_written_into_a_manifest(helm: str) -> None:
    for name in ("default", "external-redis-url", "every-option", "srt-passphrase"):
        docs = render(helm, *VALUE_SETS[name])
        secrets = [base64.b64decode(v).decode() for s in by_kind(docs, "Secret")
                   for v in s.get("data", {}).values()]
        assert secrets, name
        others = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
        for value in secrets:
            for line in value.splitlines():
                if len(line) >= 8:
                    assert line not in others, f"{name}: a Secret value appears as a literal"
        for workload in workloads(docs):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                for entry in container.get("env", []):
                    if re.search(r"TOKEN|PASSWORD|PASSPHRASE|SECRET", entry["name"]) and \
                            entry["name"] != "ARCLY_TOKEN_SECRET_FILE":
                        assert "value" not in entry, f"{name}: {entry['name']} is a literal"


def test_the_operator_gets_only_what_it_uses(default: list[dict[str, Any]]) -> None:
    (operator,) = [w for w in workloads(default) if component(w) == "operator"]
    pod = operator["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert not {"ARCLY_RELAY_TOKEN", "ARCLY_API_TOKEN", "ARCLY_TOKEN_SECRET"} & set(env)
    assert {"ARCLY_REDIS_URL", "ARCLY_REDIS_PASSWORD", "ARCLY_OPERATOR_INTERVAL",
            "ARCLY_OPERATOR_LEASE_SECONDS"} <= set(env)
    assert env["ARCLY_OPERATOR_INTERVAL"]["value"] == "10", "operator.reapInterval is wired"
    assert operator["spec"]["replicas"] == 2
    assert "--standalone" in pod["containers"][0]["command"]
    (role,) = by_kind(default, "Role")
    (cluster_role,) = by_kind(default, "ClusterRole")
    assert _rules(role) == permissions.NAMESPACED
    assert _rules(cluster_role) == permissions.CLUSTER
    for rule in role["rules"] + cluster_role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    assert not any(d["kind"] == "KopfPeering" for d in default)
    assert named(default, "PodDisruptionBudget", "-operator")["spec"]["maxUnavailable"] == 1


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    granted: dict[tuple[str, str], frozenset[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] = frozenset(rule["verbs"])
    return granted


def test_origins_and_edges_spread_and_have_disruption_budgets(
        default: list[dict[str, Any]]) -> None:
    for role in ("origin", "edge"):
        (workload,) = [w for w in workloads(default) if component(w) == role]
        spread = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname",
                                                      "topology.kubernetes.io/zone"}
        assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread)
        pdb = named(default, "PodDisruptionBudget", f"-{role}")
        assert pdb["spec"]["selector"]["matchLabels"] == workload["spec"]["selector"][
            "matchLabels"]


def test_placement_and_service_options_reach_every_workload(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["every-option"])
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], workload["metadata"]["name"]
        assert pod["priorityClassName"] == "media-critical"
        assert "pool" in pod["nodeSelector"]
    (operator,) = [w for w in workloads(docs) if component(w) == "operator"]
    assert operator["spec"]["template"]["spec"]["tolerations"][0]["key"] == "system"
    ingest = named(docs, "Service", "-ingest")["spec"]
    assert ingest["externalTrafficPolicy"] == "Local"
    assert ingest["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    ingress = named(docs, "Ingress", "-edge")
    assert ingress["spec"]["rules"][0]["host"] == "live.example"
    assert not by_kind(docs, "HorizontalPodAutoscaler"), "KEDA owns the HPA"
    scaled = named(docs, "ScaledObject", "-edge")
    assert "arcly_viewers" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    monitor = named(docs, "ServiceMonitor", "demo-arcly")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    assert "demo-arcly-edge-metrics" in scaled["spec"]["triggers"][0]["metadata"]["query"]


def test_autoscaling_is_gentle_on_scale_in_and_can_follow_viewers(helm: str,
                                                                  default: list[dict[str, Any]]
                                                                  ) -> None:
    (hpa,) = by_kind(default, "HorizontalPodAutoscaler")
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    (edge,) = [w for w in workloads(default) if component(w) == "edge"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == edge["metadata"]["name"]
    assert "replicas" not in edge["spec"], "the HPA owns the edge replica count"
    (viewers,) = by_kind(render(helm, *VALUE_SETS["viewers-hpa"]), "HorizontalPodAutoscaler")
    metric = viewers["spec"]["metrics"][0]
    assert metric["pods"]["metric"]["name"] == "arcly_viewers"
    assert metric["pods"]["target"]["averageValue"] == "800"


def test_grace_periods_are_derived_from_prestop_and_drain(helm: str) -> None:
    docs = render(helm, "--set", "edge.drainTimeout=120", "--set", "origin.preStopSeconds=10")
    for workload in workloads(docs):
        if component(workload) not in ("origin", "edge"):
            continue
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        drain = float(next(a for a in container["args"]
                           if a.startswith("--drain-timeout=")).split("=")[1])
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1].split()[-1])
        assert pod["terminationGracePeriodSeconds"] == sleep + drain + 15
    edge = next(w for w in workloads(docs) if component(w) == "edge")
    assert edge["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 140


def test_renders_of_unchanged_values_do_not_restart_pods(helm: str) -> None:
    def annotations(docs: list[dict[str, Any]]) -> list[Any]:
        return [w["spec"]["template"]["metadata"]["annotations"] for w in workloads(docs)]

    first, second = render(helm), render(helm)
    assert annotations(first) == annotations(second), "no checksum of generated tokens"

    def checksums(docs: list[dict[str, Any]]) -> dict[str, str]:
        return {component(w): w["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for w in workloads(docs)}

    before = checksums(first)
    rotated = checksums(render(helm, "--set", "api.token=rotated-token"))
    assert rotated["edge"] != before["edge"] and rotated["origin"] != before["origin"]
    assert rotated["redis"] == before["redis"], "Redis (the registry) keeps running"
    assert rotated["operator"] == before["operator"]
    password = checksums(render(helm, "--set", "redis.password=new-password"))
    assert all(password[c] != before[c] for c in before), "everyone follows the password"


def test_the_config_file_comes_from_a_config_map_and_changes_reload_without_restarts(
        helm: str) -> None:
    docs = render(helm, *VALUE_SETS["config-file"])
    config = named(docs, "ConfigMap", "-config")
    assert "fallback_stream" in config["data"]["arcly.toml"]
    for workload in workloads(docs):
        if component(workload) not in ("origin", "edge"):
            continue
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert "--config=/etc/arcly/config/arcly.toml" in container["args"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert not [d for d in render(helm) if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-config")]

    def checksums(*args: str) -> dict[str, str]:
        return {component(w): w["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for w in workloads(render(helm, *args))}

    before = checksums(*VALUE_SETS["config-file"])
    edited = checksums("--set-string", "config=log_level = \"info\"\n")
    auth = checksums(*VALUE_SETS["config-file"], "--set-string",
                     "auth.config=[default]\nprovider = \"allow-all\"\n")
    assert edited == before and auth == before, "the nodes reload these files in place"


def test_node_probes_hit_endpoints_the_node_serves(default: list[dict[str, Any]]) -> None:
    nodes = [w for w in workloads(default) if component(w) in ("origin", "edge")]
    assert len(nodes) == 2
    for workload in nodes:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
        assert container["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
        assert f"--http-listen=0.0.0.0:{ports['http']}" in container["args"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
        assert f"--metrics-listen=0.0.0.0:{ports['metrics']}" in container["args"]


def test_origins_advertise_their_headless_service_address(default: list[dict[str, Any]]) -> None:
    origin = next(s for s in by_kind(default, "StatefulSet") if component(s) == "origin")
    headless = origin["spec"]["serviceName"]
    service = named(default, "Service", headless)
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    args = origin["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--advertise-address=$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:7000" in args


def _tls_volume(docs: list[dict[str, Any]], role: str) -> tuple[list[str], dict[str, Any]]:
    (workload,) = [w for w in workloads(docs) if component(w) == role]
    pod = workload["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "relay-tls")
    return pod["containers"][0]["args"], volume["secret"]


def test_relay_tls_mounts_the_certificate_secret_and_keeps_the_key_off_edges(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["relay-tls"])  # mutual: edges present a certificate
    args, secret = _tls_volume(docs, "origin")
    assert {"--relay-tls-cert=/etc/arcly/relay-tls/tls.crt",
            "--relay-tls-ca=/etc/arcly/relay-tls/ca.crt"} <= set(args)
    assert secret == {"secretName": "relay-tls"}
    docs = render(helm, *VALUE_SETS["relay-tls"], "--set", "relay.tls.edgeSecret=edge-client")
    args, secret = _tls_volume(docs, "edge")
    assert secret == {"secretName": "edge-client"}, "mTLS: the edges' own certificate"
    assert "--relay-tls-cert=/etc/arcly/relay-tls/tls.crt" in args
    docs = render(helm, *VALUE_SETS["relay-tls"], "--set", "relay.tls.mutual=false")
    args, secret = _tls_volume(docs, "edge")
    assert secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "no origin key on edges"
    assert args[-1] == "--relay-tls-ca=/etc/arcly/relay-tls/ca.crt"
    assert not any(a.startswith("--relay-tls-cert") for a in args)


def test_otel_settings_follow_values(helm: str) -> None:
    def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
        node = next(w for w in workloads(docs) if component(w) == "edge")
        return {k: v.get("value") for k, v in env_of(
            node["spec"]["template"]["spec"]["containers"][0]).items()}

    off = env(render(helm))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in off and "OTEL_SDK_DISABLED" not in off
    on = env(render(helm, *VALUE_SETS["recording-no-hls-otel-http"]))
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert on["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"


# -- WebRTC ------------------------------------------------------------------------------------


def _nodes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """origin and edge: their Pod specs."""
    return {component(w): w["spec"]["template"]["spec"] for w in workloads(docs)
            if component(w) in ("origin", "edge")}


def _udp_ports(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The container's WebRTC ports (UDP, but SRT's)."""
    return [p for p in pod["containers"][0]["ports"]
            if p.get("protocol") == "UDP" and p["name"] != "srt"]


def _policy_udp(docs: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """What the role's NetworkPolicy admits for WebRTC (UDP, but SRT's)."""
    policy = named(docs, "NetworkPolicy", f"-{role}")
    return [port for rule in policy["spec"]["ingress"] for port in rule["ports"]
            if port["protocol"] == "UDP" and port["port"] != "srt"]


def test_webrtc_is_off_by_default_and_opens_nothing(default: list[dict[str, Any]]) -> None:
    for role, pod in _nodes(default).items():
        (container,) = pod["containers"]
        assert "--no-webrtc" in container["args"], role
        assert not [a for a in container["args"] if a.startswith("--webrtc-")], role
        assert not {"ARCLY_WEBRTC_ADVERTISE_IP", "ARCLY_ICE_SERVERS"} & set(env_of(container))
        assert not _udp_ports(pod) and not pod.get("hostNetwork"), role
        assert not _policy_udp(default, role), role
    ingest = named(default, "Service", "-ingest")
    assert "http" not in {p["name"] for p in ingest["spec"]["ports"]}, "no origin HTTP in public"


def test_webrtc_with_host_ports_reaches_each_pod_on_its_node(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["webrtc"], "--set", "webrtc.udpPorts=40000-40049",
                  "--set", "webrtc.iceServers[1]=stun:stun2.example.net:3478")
    for role, pod in _nodes(docs).items():
        (container,) = pod["containers"]
        assert {"--webrtc-udp-ports=40000-40049", "--webrtc-consent-timeout=30"} <= set(
            container["args"]), role
        assert "--no-webrtc" not in container["args"]
        env = env_of(container)
        assert env["ARCLY_WEBRTC_ADVERTISE_IP"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "status.hostIP"}}, "candidates carry the node's IP"
        assert env["ARCLY_ICE_SERVERS"]["value"] == \
            "stun:stun.example.net:3478,stun:stun2.example.net:3478"
        udp = _udp_ports(pod)
        assert len(udp) == 50, role
        assert sorted(p["containerPort"] for p in udp) == list(range(40000, 40050))
        assert all(p["hostPort"] == p["containerPort"] for p in udp)
        names = [p["name"] for p in container["ports"]]
        assert len(set(names)) == len(names) and max(map(len, names)) <= 15
        assert not pod.get("hostNetwork")
        assert _policy_udp(docs, role) == [
            {"port": 40000, "endPort": 40049, "protocol": "UDP"}], role
    ingest = named(docs, "Service", "-ingest")["spec"]["ports"]
    assert {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"} in ingest, \
        "WHIP: the origins' HTTP on the ingest Service"
    advertised = render(helm, *VALUE_SETS["webrtc"], "--set", "webrtc.advertiseIp=203.0.113.7")
    for pod in _nodes(advertised).values():
        assert env_of(pod["containers"][0])["ARCLY_WEBRTC_ADVERTISE_IP"] == {
            "name": "ARCLY_WEBRTC_ADVERTISE_IP", "value": "203.0.113.7"}


def test_webrtc_on_the_host_network_or_the_pod_network_declares_no_ports(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["webrtc-host-network-ice-secret"])
    for role, pod in _nodes(docs).items():
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert not _udp_ports(pod), "10000 ports: no hostPort list on the host network"
        (container,) = pod["containers"]
        assert {"--webrtc-udp-ports=20000-29999", "--webrtc-consent-timeout=12.5"} <= set(
            container["args"])
        env = env_of(container)
        assert env["ARCLY_WEBRTC_ADVERTISE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "status.hostIP"
        assert env["ARCLY_ICE_SERVERS"]["valueFrom"] == {
            "secretKeyRef": {"name": "turn-servers", "key": "ice-servers"}}, role
        assert _policy_udp(docs, role) == [
            {"port": 20000, "endPort": 29999, "protocol": "UDP"}], role
    for workload in workloads(docs):
        if component(workload) not in ("origin", "edge"):
            assert not workload["spec"]["template"]["spec"].get("hostNetwork")
    docs = render(helm, "--set", "webrtc.enabled=true", "--set", "webrtc.expose=none")
    for role, pod in _nodes(docs).items():
        assert not pod.get("hostNetwork") and not _udp_ports(pod), role
        env = env_of(pod["containers"][0])
        assert env["ARCLY_WEBRTC_ADVERTISE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "status.podIP", "none: only the Pod network reaches the Pod"
        assert "ARCLY_ICE_SERVERS" not in env


def _notes(helm: str, *args: str) -> str:
    result = subprocess.run(
        [helm, "install", "demo", str(CHART), "--namespace", "media", "--dry-run=client", *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBECONFIG": "/nonexistent"})  # offline: no cluster is asked
    assert result.returncode == 0, result.stderr
    return result.stdout.partition("NOTES:")[2]


@pytest.mark.parametrize(("expose", "caveat"), [
    ("hostPort", "one origin or edge per node"),
    ("hostNetwork", "bind on the node too: one Pod per node"),
    ("none", "only\n   clients inside the cluster network connect"),
])
def test_notes_give_the_webrtc_urls_and_what_the_exposure_means(helm: str, expose: str,
                                                               caveat: str) -> None:
    notes = _notes(helm, "--set", "webrtc.enabled=true", "--set", f"webrtc.expose={expose}")
    assert "http://$EDGE:80/live/cam1/whep" in notes
    assert "http://$INGEST:80/live/cam1/whip" in notes
    assert "UDP 40000-40099" in notes and caveat in notes, notes


# -- SRT ---------------------------------------------------------------------------------------


def _service_ports(docs: list[dict[str, Any]], suffix: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in named(docs, "Service", suffix)["spec"]["ports"]}


def _all_udp(docs: list[dict[str, Any]]) -> list[Any]:
    """Every UDP port of every container, Service and NetworkPolicy."""
    found: list[Any] = []
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            found += [p for p in container.get("ports", []) if p.get("protocol") == "UDP"]
    for service in by_kind(docs, "Service"):
        found += [p for p in service["spec"]["ports"] if p.get("protocol") == "UDP"]
    for policy in by_kind(docs, "NetworkPolicy"):
        found += [p for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])
                  if p["protocol"] == "UDP"]
    return found


def test_srt_is_on_by_default_for_publishers_at_the_ingest_and_readers_at_the_edges(
        default: list[dict[str, Any]]) -> None:
    for role, pod in _nodes(default).items():
        (container,) = pod["containers"]
        assert {"--srt-listen=0.0.0.0:8890", "--srt-latency-ms=120"} <= set(container["args"])
        assert {"name": "srt", "containerPort": 8890, "protocol": "UDP"} in container["ports"]
        assert "ARCLY_SRT_PASSPHRASE" not in env_of(container), "no passphrase: none"
        policy = named(default, "NetworkPolicy", f"-{role}")
        assert {"port": "srt", "protocol": "UDP"} in policy["spec"]["ingress"][0]["ports"], \
            f"{role}: SRT from anywhere, like RTMP"
    udp = {"name": "srt", "port": 8890, "targetPort": "srt", "protocol": "UDP"}
    assert _service_ports(default, "-ingest")["srt"] == udp, "encoders publish to origins"
    assert _service_ports(default, "-edge")["srt"] == udp, "viewers read from edges"
    assert "srt" not in _service_ports(default, "-origin-headless")
    assert not [s for s in by_kind(default, "Service") if s["metadata"]["name"].endswith("-srt")]
    assert "srt-passphrase" not in named(default, "Secret", "-secrets")["data"]


def test_srt_disabled_turns_the_listener_off_and_opens_no_udp(helm: str) -> None:
    docs = render(helm, "--set", "srt.enabled=false", "--set-string",
                  "srt.passphrase=correct horse battery")
    for role, pod in _nodes(docs).items():
        args = pod["containers"][0]["args"]
        assert "--srt-listen=off" in args, role
        assert not [a for a in args if a.startswith("--srt-") and a != "--srt-listen=off"]
        assert "ARCLY_SRT_PASSPHRASE" not in env_of(pod["containers"][0])
    assert not _all_udp(docs), "no SRT port on Pods, Services or NetworkPolicies"
    assert "srt-passphrase" not in named(docs, "Secret", "-secrets")["data"]


def test_srt_passphrase_reaches_nodes_only_by_secret_reference(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["srt-passphrase"])
    secret = named(docs, "Secret", "-secrets")["data"]["srt-passphrase"]
    assert base64.b64decode(secret).decode() == "correct horse battery"
    assert "correct horse battery" not in yaml.safe_dump(
        [d for d in docs if d["kind"] != "Secret"])
    for role, pod in _nodes(docs).items():
        (container,) = pod["containers"]
        assert env_of(container)["ARCLY_SRT_PASSPHRASE"]["valueFrom"] == {
            "secretKeyRef": {"name": "demo-arcly-secrets", "key": "srt-passphrase"}}, role
        assert {"--srt-listen=0.0.0.0:9000", "--srt-latency-ms=400"} <= set(container["args"])
        assert {"name": "srt", "containerPort": 9000, "protocol": "UDP"} in container["ports"]
    for suffix in ("-ingest", "-edge"):
        assert _service_ports(docs, suffix)["srt"]["port"] == 9000
    docs = render(helm, *VALUE_SETS["srt-secret-separate-services"])
    for pod in _nodes(docs).values():
        assert env_of(pod["containers"][0])["ARCLY_SRT_PASSPHRASE"]["valueFrom"] == {
            "secretKeyRef": {"name": "srt-passphrase", "key": "srt-passphrase"}}
    assert "srt-passphrase" not in named(docs, "Secret", "-secrets")["data"]

    def checksums(*args: str) -> dict[str, str]:
        return {component(w): w["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for w in workloads(render(helm, *args))}

    before = checksums(*VALUE_SETS["srt-passphrase"])
    rotated = checksums(*VALUE_SETS["srt-passphrase"],
                        "--set-string", "srt.passphrase=another horse battery")
    assert rotated["origin"] != before["origin"] and rotated["edge"] != before["edge"], \
        "a new passphrase restarts the nodes (env from a Secret is read at start)"
    assert rotated["redis"] == before["redis"] and rotated["operator"] == before["operator"]


def test_srt_can_have_services_of_its_own(helm: str) -> None:
    docs = render(helm, *VALUE_SETS["srt-secret-separate-services"])
    for suffix, role in (("-ingest", "origin"), ("-edge", "edge")):
        shared = named(docs, "Service", suffix)
        assert "srt" not in _service_ports(docs, suffix)
        own = named(docs, "Service", f"{suffix}-srt")
        assert own["spec"]["ports"] == [
            {"name": "srt", "port": 8890, "targetPort": "srt", "protocol": "UDP"}]
        assert own["spec"]["selector"]["app.kubernetes.io/component"] == role
        assert own["spec"]["selector"] == shared["spec"]["selector"]
        for option in ("type", "externalTrafficPolicy"):
            assert own["spec"].get(option) == shared["spec"].get(option), (suffix, option)
        assert own["metadata"].get("annotations") == shared["metadata"].get("annotations")
    assert named(docs, "Service", "-ingest-srt")["spec"]["externalTrafficPolicy"] == "Local"
    assert named(docs, "Service", "-edge-srt")["metadata"]["annotations"] == {"team": "media"}


def test_notes_give_the_srt_urls(helm: str) -> None:
    notes = _notes(helm, "--set", "auth.config=")
    assert "srt://$INGEST:8890?streamid=publish:live/cam1\n" in notes
    assert "srt://$EDGE:8890?streamid=read:live/cam1 " in notes
    assert "srt.separateService=true" in notes and "Kubernetes >= 1.26" in notes
    signed = _notes(helm)  # the default: publishing needs a signed token, over SRT too
    assert "streamid=%23!::r=live/cam1,m=publish,$(echo \"$Q\" | tr '&' ',')" in signed
    own = _notes(helm, *VALUE_SETS["srt-secret-separate-services"])
    assert "get svc demo-arcly-ingest-srt" in own and "get svc demo-arcly-edge-srt" in own
    assert "get secret srt-passphrase -o jsonpath='{.data.srt-passphrase}'" in own
    assert "srt://$EDGE_SRT:8890?streamid=read:live/cam1&passphrase=$SRT_PASSPHRASE" in own
    assert "Kubernetes >= 1.26" not in own
    assert "srt://" not in _notes(helm, "--set", "srt.enabled=false")


# -- render → run ------------------------------------------------------------------------------


SRT_PASSPHRASE = "rendered srt passphrase"
SRT_LATENCY_MS = 250


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Rendered:
    """A rendered chart's Secrets and containers, turned into local processes."""

    def __init__(self, docs: list[dict[str, Any]], tmp: Path) -> None:
        self.docs = docs
        self.tmp = tmp
        self.secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                                for k, v in s.get("data", {}).items()}
                        for s in by_kind(docs, "Secret")}

    def container(self, role: str) -> dict[str, Any]:
        (workload,) = [w for w in workloads(self.docs) if component(w) == role]
        return dict(workload["spec"]["template"]["spec"]["containers"][0])

    def volumes(self, role: str) -> dict[str, dict[str, Any]]:
        (workload,) = [w for w in workloads(self.docs) if component(w) == role]
        return {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}

    def env(self, container: dict[str, Any], pod: str, overrides: dict[str, str]
            ) -> dict[str, str]:
        """The container's environment as the kubelet builds it: secretKeyRef and fieldRef
        resolved, $(VAR) expanded."""
        resolved: dict[str, str] = {}
        for entry in container.get("env", []):
            if "value" in entry:
                value = re.sub(r"\$\((\w+)\)", lambda m: resolved.get(m.group(1), m.group(0)),
                               str(entry["value"]))
            elif "secretKeyRef" in entry["valueFrom"]:
                ref = entry["valueFrom"]["secretKeyRef"]
                value = self.secrets[ref["name"]][ref["key"]]
            else:
                field = entry["valueFrom"]["fieldRef"]["fieldPath"]
                value = {"metadata.name": pod, "metadata.namespace": "media",
                         "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1"}[field]
            resolved[entry["name"]] = value
        return {**resolved, **overrides}

    def mount_secrets(self, role: str, container: dict[str, Any]) -> dict[str, str]:
        """Write each mounted Secret volume into a folder; return mount path → folder."""
        mapping: dict[str, str] = {}
        volumes = self.volumes(role)
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            folder = self.tmp / role / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in self.secrets[secret["secretName"]].items():
                (folder / key).write_text(value)
            mapping[mount["mountPath"]] = str(folder)
        return mapping

    def args(self, container: dict[str, Any], env: dict[str, str], mounts: dict[str, str],
             listen: dict[str, str]) -> list[str]:
        out = []
        for rendered in container["args"]:
            arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], rendered)
            flag = arg.partition("=")[0]
            if flag in listen:
                arg = f"{flag}={listen[flag]}"
            for path, folder in mounts.items():
                arg = arg.replace(path, folder)
            out.append(arg)
        return out


@pytest.fixture
def chart_nodes(helm: str, tmp_path: Path, ffmpeg: str
                ) -> Iterator[tuple[Rendered, RedisServer, Callable[..., Node]]]:
    rendered = Rendered(render(helm, "--set", "webrtc.enabled=true",
                               "--set-string", f"srt.passphrase={SRT_PASSPHRASE}",
                               "--set", f"srt.latencyMs={SRT_LATENCY_MS}"), tmp_path)
    password = rendered.secrets["demo-arcly-secrets"]["redis-password"]
    redis = RedisServer(password=password)
    nodes: list[Node] = []

    def start(role: str) -> Node:
        container = rendered.container(role)
        env = rendered.env(container, f"demo-arcly-{role}-0", {
            "ARCLY_REDIS_URL": redis.url, "ARCLY_LOG_JSON": "false"})
        mounts = rendered.mount_secrets(role, container)
        grpc = free_port()
        listen = {"--rtmp-listen": "127.0.0.1:0", "--http-listen": "127.0.0.1:0",
                  "--srt-listen": "127.0.0.1:0",
                  "--grpc-listen": f"127.0.0.1:{grpc}",
                  "--advertise-address": f"127.0.0.1:{grpc}", "--metrics-listen": "127.0.0.1:0"}
        args = rendered.args(container, env, mounts, listen)
        node = Node(*args[1:], role=args[0], env=env)
        nodes.append(node)
        return node

    try:
        yield rendered, redis, start
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def srt_video_frames(port: int, streamid: str, passphrase: str, frames: int = 10
                     ) -> tuple[int, int]:
    """Read ``streamid`` over SRT from 127.0.0.1:``port`` (a caller asking for 20 ms of
    latency) until ``frames`` video frames came: (the latency the connection settled on, the
    frames read). A refusal raises ``libsrt.SrtError`` with its ``reject_reason``."""
    lib = libsrt.load()
    sock = lib.create_socket()
    try:
        lib.setsockflag(sock, libsrt.SockOpt.STREAMID, streamid)
        lib.setsockflag(sock, libsrt.SockOpt.PASSPHRASE, passphrase)
        lib.setsockflag(sock, libsrt.SockOpt.LATENCY, 20)  # SRT takes the larger side's
        lib.setsockflag(sock, libsrt.SockOpt.RCVTIMEO, 10_000)
        lib.connect(sock, "127.0.0.1", port)
        latency = lib.getsockflag_int(sock, libsrt.SockOpt.RCVLATENCY)
        demuxer, seen = TsDemuxer(), 0
        deadline = time.monotonic() + 15
        while seen < frames and time.monotonic() < deadline:
            seen += sum(1 for frame in demuxer.feed(lib.recvmsg(sock))
                        if frame.kind is FrameKind.VIDEO and not frame.config)
        return latency, seen
    finally:
        lib.close(sock)


def libsrt_missing() -> str:
    """Why libsrt cannot be loaded here ("" when it can): the nodes then run without SRT."""
    try:
        libsrt.load()
    except RuntimeError as exc:  # SrtUnavailable
        return str(exc)
    return ""


def test_rendered_containers_run_as_a_cluster_that_enforces_tokens_and_serves_webrtc_and_srt(
        chart_nodes: tuple[Rendered, RedisServer, Callable[..., Node]], ffmpeg: str,
        source_flv: Path) -> None:
    rendered, redis, start = chart_nodes
    origin, edge = start("origin"), start("edge")
    assert "AUTH IS OFF" not in origin.log_text() and "RELAY AUTH IS OFF" not in origin.log_text()
    secrets = rendered.secrets["demo-arcly-secrets"]

    async def refused() -> str:
        client = await RtmpClient.connect("127.0.0.1", origin.rtmp, "live")
        code = (await client.publish("cam1")).code
        await client.close()
        return code

    assert asyncio.run(refused()) == "NetStream.Publish.Unauthorized", "no token: refused"
    query = "&".join(f"{k}={v}" for k, v in tokens.sign(
        secrets["token-secret"], "publish", "live", "cam1", ttl=600).items())
    publisher = FfmpegPublisher(ffmpeg, source_flv,
                                f"rtmp://127.0.0.1:{origin.rtmp}/live/cam1?{query}")
    try:
        origin.wait_for_log(r"publish start stream=live/cam1 ", timeout=20)

        async def watch() -> int:
            viewer = await HttpFlvReader.open(edge.http, "/live/cam1.flv")
            assert viewer.status == 200
            await viewer.read_header()
            tags = [await viewer.next_tag(10) for _ in range(30)]
            await viewer.close()
            return len(tags)

        assert asyncio.run(watch()) == 30, "the edge relays over the rendered relay token"
        assert "relay subscribed stream=live/cam1" in edge.log_text()

        async def whep() -> tuple[str, int]:
            viewer = await webrtc.whep(f"http://127.0.0.1:{edge.http}", "live/cam1")
            try:
                await eventually(lambda: len(viewer.frames.get("video", [])) >= 10, 10,
                                 message="no video over WHEP")
                return viewer.pc.remoteDescription.sdp, len(viewer.frames["video"])
            finally:
                await viewer.close()

        # WHEP with the rendered WebRTC flags: candidates on the (fieldRef'd) host IP, in the
        # rendered UDP range.
        answer, frames = asyncio.run(whep())
        assert frames >= 10
        candidates = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", answer,
                                re.IGNORECASE)
        assert candidates and all(ip == "127.0.0.1" and 40000 <= int(port) <= 40099
                                  for ip, port in candidates), answer
        # SRT with the rendered flags and the passphrase the Secret hands the edge.
        if libsrt_missing():
            assert "SRT is off" in edge.log_text(), "no libsrt: the node says so, runs on"
        else:
            edge.wait_for_log(r"listening protocol=srt ")
            assert secrets["srt-passphrase"] == SRT_PASSPHRASE
            with pytest.raises(libsrt.SrtError) as refused_srt:
                srt_video_frames(edge.srt, "read:live/cam1", "not the passphrase")
            assert refused_srt.value.reject_reason == libsrt.RejectReason.BADSECRET
            latency, frames = srt_video_frames(edge.srt, "read:live/cam1",
                                               secrets["srt-passphrase"])
            assert frames >= 10, "MPEG-TS over SRT from the edge"
            assert latency == SRT_LATENCY_MS, "the rendered --srt-latency-ms"
        # The management API wants the rendered API token.
        import urllib.error
        import urllib.request
        url = f"http://127.0.0.1:{edge.http}/api/v1/streams"
        with pytest.raises(urllib.error.HTTPError) as unauthorized:
            urllib.request.urlopen(url, timeout=10)
        assert unauthorized.value.code == 401
        request = urllib.request.Request(url, headers={
            "Authorization": f"Bearer {secrets['api-token']}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        assert redis.command("AUTH", secrets["redis-password"]).startswith("+OK")
    finally:
        publisher.stop()
