"""Chart, manifests, dashboard and Dockerfile: helm lint/template with several value sets,
Kubernetes schemas, yamllint, hadolint, security settings, and agreement of ports, probe
paths and flags between the chart, the manifests and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from metacollector import metrics
from metacollector.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "metacollector"
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
KUBE_VERSIONS = ("1.27.0", "1.37.0")
PORTS = {"broker-grpc": 45000, "metrics": 8080, "health-probe": 8081}

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "tls-mtls-binding": [
        "--set",
        "tls.existingSecret=mc-tls",
        "--set",
        "mtls.clientCASecret=mc-ca",
        "--set",
        "mtls.nodeBinding=true",
    ],
    "ca-from-configmap": [
        "--set",
        "tls.existingSecret=mc-tls",
        "--set",
        "mtls.clientCAConfigMap=mc-ca",
    ],
    "monitoring-cloudevents": [
        "--set",
        "serviceMonitor.create=true",
        "--set",
        "serviceMonitor.labels.release=prom",
        "--set",
        "grafana.dashboards.enabled=true",
        "--set",
        "grafana.dashboards.configMaps.collector.folder=falco",
        "--set",
        "cloudevents.sink=http://broker-ingress.knative-eventing.svc/default/default",
        "--set",
        "cloudevents.source=/metacollector/prod",
    ],
    "overrides": [
        "--set",
        "fullnameOverride=collector",
        "--set",
        "namespaceOverride=observability",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=existing-sa",
        "--set",
        "image.registry=registry.example.com",
        "--set",
        "image.tag=1.2.3",
        "--set",
        "image.pullSecrets[0].name=regcred",
        "--set",
        "replicaCount=2",
        "--set",
        "nodeSelector.kubernetes\\.io/os=linux",
        "--set",
        "tolerations[0].operator=Exists",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/arch",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "--set",
        "podAnnotations.team=sec",
        "--set",
        "logFormat=console",
        "--set",
        "extraArgs[0]=--stall-timeout=60",
    ],
    "ha": ["--set", "replicaCount=2"],
    "upstream-style": [
        "--set",
        "image.registry=",
        "--set",
        "image.repository=falcosecurity/k8s-metacollector",
        "--set",
        "image.tag=0.1.3",
        "--set",
        "serviceMonitor.create=true",
        "--set-json",  # --set reads "{...}" as a list
        'serviceMonitor.namespace="{{ .Release.Namespace }}-monitoring"',
        "--set",
        "service.ports.metrics.targetPort=metrics",
        "--set",
        "grafana.dashboards.enabled=true",
        "--set",
        "grafana.dashboards.configMaps.collector.folder=falco",
        "--set",
        "grafana.dashboards.configMaps.collector.folderAnnotation=dashboards/folder",
    ],
    "security": [
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "nodeBinding.peerAddress=true",
        "--set",
        "cloudevents.sink=http://broker-ingress.knative-eventing.svc/default/default",
        "--set",
        "cloudevents.tokenAudience=broker-ingress.knative-eventing.default.default",
    ],
}
# Flags the chart renders that other branches add to `metacollector run` (leader election:
# issue 15; peer-address binding and the sink token: issue 19). Checked once they exist.
PENDING_FLAGS = {
    "--leader-elect",
    "--leader-election-namespace",
    "--leader-election-id",
    "--cloudevents-token-file",
}
LEASES = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "create", "update"],
}
SEVEN = {
    ("", "pods"),
    ("", "namespaces"),
    ("", "services"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "daemonsets"),
}


def render(helm: Path, args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(helm), "template", "mc", str(CHART), "--namespace", "falco", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def applied_files() -> list[Path]:
    """What `kubectl apply -f k8s/` reads: the directory's own manifests, in name order."""
    return sorted(
        p for p in K8S.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json")
    )


def manifests() -> list[dict[str, Any]]:
    files = [*applied_files(), K8S / "monitoring" / "servicemonitor.yaml"]
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    assert isinstance(found, dict)
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def validate(docs: list[dict[str, Any]]) -> None:
    """Every built-in object against the Kubernetes OpenAPI schemas (strict: no unknown
    fields), oldest and newest version we support. ServiceMonitor is a CRD: checked apart."""
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']} {version}: {exc.message}") from None


def check_security(docs: list[dict[str, Any]]) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc.get("privileged") is not True
    for volume in pod.get("volumes", []):
        assert "hostPath" not in volume
    if not [d for d in docs if d["kind"] == "ClusterRole"]:  # serviceAccount.create=false
        assert not [d for d in docs if "Role" in d["kind"]]
        return
    role = one(docs, "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no names, no URLs
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == SEVEN
    args = container(docs)["args"]
    if "--leader-elect" in args:  # leases in the lease's namespace, nothing else
        lease_role = one(docs, "Role")
        assert lease_role["rules"] == [LEASES]
        lease_binding = one(docs, "RoleBinding")
        assert lease_binding["roleRef"]["name"] == lease_role["metadata"]["name"]
        assert lease_binding["metadata"]["namespace"] == lease_role["metadata"]["namespace"]
        assert f"--leader-election-namespace={lease_role['metadata']['namespace']}" in args
    else:
        assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa_name = pod.get("serviceAccountName")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa_name,
            "namespace": one(docs, "Deployment")["metadata"]["namespace"],
        }
    ]


def check_service_monitor(docs: list[dict[str, Any]]) -> None:
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]


def check_network_policy(policy: dict[str, Any], deployment: dict[str, Any]) -> None:
    """gRPC only from Falco pods in Falco's namespace (both selectors in one peer: AND),
    metrics only from the monitoring namespace, probes from anywhere; ingress only."""
    spec = policy["spec"]
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in spec["ingress"]}
    assert set(by_port) == set(PORTS)
    assert all(len(rule["ports"]) == 1 for rule in spec["ingress"])
    (falco,) = by_port["broker-grpc"]["from"]
    assert falco == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "falco"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "falco"}},
    }
    (monitoring,) = by_port["metrics"]["from"]
    assert monitoring == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert "from" not in by_port["health-probe"]  # the kubelet probes from the node


# --- helm -------------------------------------------------------------------------------------


def test_helm_lint_strict_with_every_value_set(helm: Path) -> None:
    for name, args in VALUE_SETS.items():
        proc = subprocess.run(
            [str(helm), "lint", str(CHART), "--strict", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_rendered_objects_validate_and_are_locked_down(helm: Path, value_set: str) -> None:
    docs = render(helm, VALUE_SETS[value_set])
    validate(docs)
    check_security(docs)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service"} <= kinds
    deployment = one(docs, "Deployment")
    # never below the desired number of ready (= synced) replicas during a rolling update
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert one(docs, "Service")["spec"]["publishNotReadyAddresses"] is False
    pod = deployment["spec"]["template"]["spec"]
    args = container(docs)["args"]
    mounts = {m["mountPath"] for m in container(docs).get("volumeMounts", [])}
    if value_set != "overrides":
        assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} <= kinds
    if value_set not in ("ha", "overrides"):
        assert "PodDisruptionBudget" not in kinds and "topologySpreadConstraints" not in pod
        assert "--leader-elect" not in args
    if value_set != "security":
        assert "NetworkPolicy" not in kinds  # off by default
    if value_set == "defaults":
        assert "ServiceAccount" in kinds and "ServiceMonitor" not in kinds
        assert container(docs)["image"] == "ghcr.io/metacollector/metacollector:0.1.0"
        assert not any(
            a.startswith(("--broker-server", "--broker-client", "--cloud")) for a in args
        )
        assert "volumes" not in pod
    if value_set == "tls-mtls-binding":
        assert "--broker-server-cert=/etc/metacollector/tls/tls.crt" in args
        assert "--broker-server-key=/etc/metacollector/tls/tls.key" in args
        assert "--broker-client-ca=/etc/metacollector/client-ca/ca.crt" in args
        assert "--broker-node-binding" in args
        assert mounts == {"/etc/metacollector/tls", "/etc/metacollector/client-ca"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "mc-tls"
        assert volumes["client-ca"]["secret"]["secretName"] == "mc-ca"
    if value_set == "ca-from-configmap":
        assert "--broker-client-ca=/etc/metacollector/client-ca/ca.crt" in args
        assert "--broker-node-binding" not in args
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["client-ca"]["configMap"]["name"] == "mc-ca"
    if value_set == "monitoring-cloudevents":
        assert (
            "--cloudevents-sink=http://broker-ingress.knative-eventing.svc/default/default" in args
        )
        assert "--cloudevents-mode=binary" in args
        assert "--cloudevents-source=/metacollector/prod" in args
        check_service_monitor(docs)
        assert one(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"
        dashboard = one(docs, "ConfigMap")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["annotations"]["grafana_dashboard_folder"] == "falco"
        assert json.loads(dashboard["data"]["metacollector.json"]) == json.loads(
            (CHART / "dashboards" / "metacollector.json").read_text()
        )
    if value_set in ("ha", "overrides"):  # replicaCount=2: the HA set-up
        budget = one(docs, "PodDisruptionBudget")
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
        (spread,) = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
        assert spread["labelSelector"] == deployment["spec"]["selector"]
        namespace = deployment["metadata"]["namespace"]
        name = deployment["metadata"]["name"]
        assert args[-4 if value_set == "overrides" else -3 :][:3] == [
            "--leader-elect",
            f"--leader-election-namespace={namespace}",
            f"--leader-election-id={name}",
        ]
    if value_set == "upstream-style":
        assert container(docs)["image"] == "falcosecurity/k8s-metacollector:0.1.3"
        monitor = one(docs, "ServiceMonitor")
        assert monitor["metadata"]["namespace"] == "falco-monitoring"  # templated
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["falco"]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
        assert monitor["spec"]["jobLabel"] == "mc"
        dashboard = one(docs, "ConfigMap")
        assert dashboard["metadata"]["annotations"]["dashboards/folder"] == "falco"
        assert "grafana_dashboard_folder" not in dashboard["metadata"]["annotations"]
    if value_set == "security":
        assert "--broker-node-binding=peer-address" in args
        token = "/var/run/secrets/metacollector/cloudevents/token"
        assert f"--cloudevents-token-file={token}" in args
        (volume,) = pod["volumes"]
        (source,) = volume["projected"]["sources"]
        assert source["serviceAccountToken"] == {
            "path": "token",
            "audience": "broker-ingress.knative-eventing.default.default",
            "expirationSeconds": 3600,
        }
        (mount,) = container(docs)["volumeMounts"]
        assert mount["name"] == volume["name"] and token.startswith(mount["mountPath"] + "/")
        check_network_policy(one(docs, "NetworkPolicy"), deployment)
    if value_set == "overrides":
        assert "ServiceAccount" not in kinds
        # like upstream: no ClusterRole bound to an account the chart did not create
        assert not [d for d in docs if "Role" in d["kind"]]
        assert pod["serviceAccountName"] == "existing-sa"
        assert deployment["metadata"]["name"] == "collector"
        assert {d["metadata"].get("namespace") for d in docs} == {
            "observability"
        }  # no cluster RBAC
        assert container(docs)["image"] == "registry.example.com/metacollector/metacollector:1.2.3"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert deployment["spec"]["replicas"] == 2
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert pod["tolerations"] == [{"operator": "Exists"}]
        assert "nodeAffinity" in pod["affinity"]
        assert deployment["spec"]["template"]["metadata"]["annotations"] == {"team": "sec"}
        assert "--log-format=console" in args and args[-1] == "--stall-timeout=60"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "mtls.clientCASecret=ca"], "needs TLS on the gRPC port"),
        (["--set", "mtls.nodeBinding=true"], "mtls.nodeBinding needs a client CA"),
        (
            [
                "--set",
                "tls.existingSecret=t",
                "--set",
                "mtls.clientCASecret=a",
                "--set",
                "mtls.clientCAConfigMap=b",
            ],
            "not both",
        ),
    ],
)
def test_chart_refuses_settings_the_collector_would_reject(
    helm: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [str(helm), "template", "mc", str(CHART), *args], capture_output=True, text=True
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_notes_name_the_service_the_plugin_connects_to(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "install", "mc", str(CHART), "--dry-run=client", "--namespace", "falco"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "mc-metacollector.falco.svc:45000" in notes
    assert "collectorHostname: mc-metacollector.falco.svc" in notes


def test_values_keep_the_upstream_chart_keys() -> None:
    """The keys of falcosecurity/charts' k8s-metacollector values.yaml, so values files written
    for it keep working."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    upstream = [
        "replicaCount",
        "image.pullPolicy",
        "image.pullSecrets",
        "image.registry",
        "image.repository",
        "image.tag",
        "nameOverride",
        "fullnameOverride",
        "namespaceOverride",
        "serviceAccount.create",
        "serviceAccount.annotations",
        "serviceAccount.name",
        "podAnnotations",
        "podSecurityContext",
        "containerSecurityContext.capabilities.drop",
        "service.create",
        "service.type",
        "service.ports.metrics.port",
        "service.ports.metrics.targetPort",
        "service.ports.metrics.protocol",
        "service.ports.health-probe.port",
        "service.ports.broker-grpc.port",
        "serviceMonitor.create",
        "serviceMonitor.namespace",
        "serviceMonitor.path",
        "serviceMonitor.labels",
        "serviceMonitor.interval",
        "serviceMonitor.scheme",
        "serviceMonitor.tlsConfig",
        "serviceMonitor.scrapeTimeout",
        "serviceMonitor.relabelings",
        "serviceMonitor.targetLabels",
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "healthChecks.livenessProbe.httpGet.path",
        "healthChecks.readinessProbe.httpGet.path",
        "grafana.dashboards.enabled",
        "grafana.dashboards.configMaps.collector.name",
        "grafana.dashboards.configMaps.collector.namespace",
        "grafana.dashboards.configMaps.collector.folder",
        "grafana.dashboards.configMaps.collector.folderAnnotation",
        "podLabels",
        "service.ports.health-probe.targetPort",
        "service.ports.broker-grpc.targetPort",
        "healthChecks.livenessProbe.httpGet.port",
        "healthChecks.readinessProbe.httpGet.port",
    ]
    for dotted in upstream:
        node: Any = values
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, dotted
            node = node[part]


# --- manifests --------------------------------------------------------------------------------


def test_kubectl_apply_directory_is_ordered_and_complete() -> None:
    """`kubectl apply -f k8s/` reads the directory's files in name order and applies objects
    in that order: every file must hold Kubernetes objects, and the Namespace must come first."""
    docs = [d for f in applied_files() for d in yaml.safe_load_all(f.read_text()) if d]
    assert all("apiVersion" in d and "kind" in d for d in docs)
    assert docs[0]["kind"] == "Namespace"
    namespace = docs[0]["metadata"]["name"]
    for doc in docs[1:]:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]
    assert [d["kind"] for d in docs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
    ]


def test_manifests_validate_and_are_locked_down() -> None:
    docs = manifests()
    validate(docs)
    check_security(docs)
    check_service_monitor(docs)
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= (
        one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_optional_manifests_match_the_chart(helm: Path) -> None:
    """k8s/ha/ and k8s/networkpolicy/ are the chart's replicaCount=2 and networkPolicy objects."""
    deployment = one(manifests(), "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    ha = [d for d in yaml.safe_load_all((K8S / "ha" / "ha.yaml").read_text()) if d]
    policy = [
        d
        for d in yaml.safe_load_all((K8S / "networkpolicy" / "networkpolicy.yaml").read_text())
        if d
    ]
    validate(ha + policy)
    budget = one(ha, "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    chart = render(helm, VALUE_SETS["ha"] + VALUE_SETS["security"])
    assert budget["spec"] == one(chart, "PodDisruptionBudget")["spec"] | {
        "selector": budget["spec"]["selector"]
    }
    assert one(ha, "Role")["rules"] == one(chart, "Role")["rules"] == [LEASES]
    subject = one(ha, "RoleBinding")["subjects"][0]
    assert subject["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    check_network_policy(one(policy, "NetworkPolicy"), deployment)
    text = (K8S / "ha" / "ha.yaml").read_text()
    for flag in ("--leader-elect", "--leader-election-namespace=", "--leader-election-id="):
        assert flag in text  # the patch in its header


def test_manifests_match_the_chart_defaults(helm: Path) -> None:
    """The plain manifests are the chart's defaults written out: same container contract."""
    chart = container(render(helm, []))
    plain = container(manifests())
    for key in ("args", "livenessProbe", "readinessProbe", "resources", "securityContext"):
        assert plain[key] == chart[key], key
    by_name = sorted(chart["ports"], key=lambda p: p["name"])
    assert sorted(plain["ports"], key=lambda p: p["name"]) == by_name  # order carries no meaning
    chart_pod = one(render(helm, []), "Deployment")["spec"]["template"]["spec"]
    plain_pod = one(manifests(), "Deployment")["spec"]["template"]["spec"]
    assert plain_pod["securityContext"] == chart_pod["securityContext"]
    assert one(manifests(), "ClusterRole")["rules"] == one(render(helm, []), "ClusterRole")["rules"]


def test_falco_values_use_the_falco_charts_own_wiring_with_our_image() -> None:
    """collectors.kubernetes.enabled with the subchart's image pointed at ours; the plugin and
    rules versions the Falco chart (falcosecurity/charts, falco 9.x) ships."""
    values = yaml.safe_load((K8S / "falco" / "values.yaml").read_text())
    kubernetes = values["collectors"]["kubernetes"]
    assert kubernetes["enabled"] is True
    assert kubernetes["pluginRef"] == "ghcr.io/falcosecurity/plugins/plugin/k8smeta:0.4.1"
    assert "plugins" not in values.get("falco", {})  # the chart generates the plugin config
    image = values["k8s-metacollector"]["image"]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert image["registry"] == chart_values["image"]["registry"]
    assert image["repository"] == chart_values["image"]["repository"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert image["tag"] == chart["appVersion"]
    artifact = values["falcoctl"]["config"]["artifact"]
    assert artifact["install"]["refs"] == artifact["follow"]["refs"] == ["falco-rules:5"]


# --- agreement with the CLI -------------------------------------------------------------------


def run_flags() -> dict[str, Any]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    run: Any = sub.choices["run"]  # type: ignore[index]
    return {opt: action for action in run._actions for opt in action.option_strings}


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_ports_probes_and_flags_agree_with_cli(helm: Path, source: str) -> None:
    docs = (
        render(
            helm,
            VALUE_SETS["tls-mtls-binding"]
            + VALUE_SETS["monitoring-cloudevents"]
            + VALUE_SETS["ha"]
            + ["--set", "cloudevents.tokenAudience=sink"],
        )
        if source == "chart"
        else manifests()
    )
    flags = run_flags()
    c = container(docs)
    assert c["args"][0] == "run"
    values: dict[str, str] = {}
    for arg in c["args"][1:]:
        name, eq, value = arg.partition("=")
        if name in PENDING_FLAGS and name not in flags:
            continue
        assert name in flags, f"{source}: {name} is not a flag of `metacollector run`"
        action = flags[name]
        if eq:
            assert action.nargs != 0, f"{name} takes no value"
            if action.choices:
                assert value in action.choices, (name, value)
        else:
            assert action.nargs in (0, "?"), f"{name} needs a value"
        values[name] = value
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == PORTS
    for flag, port in (
        ("--broker-bind-address", "broker-grpc"),
        ("--metrics-bind-address", "metrics"),
        ("--health-probe-bind-address", "health-probe"),
    ):
        assert values[flag] == flags[flag].default == f":{ports[port]}"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health-probe"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health-probe"}
    service = one(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        name: name for name in ports
    }


def test_dockerfile_exposes_the_cli_defaults() -> None:
    text = (ROOT / "Dockerfile").read_text()
    flags = run_flags()
    exposed = re.search(r"^EXPOSE (.+)$", text, re.M)
    assert exposed is not None
    defaults = {
        int(flags[f].default.rsplit(":", 1)[1])
        for f in ("--broker-bind-address", "--metrics-bind-address", "--health-probe-bind-address")
    }
    assert set(map(int, exposed.group(1).split())) == defaults == set(PORTS.values())


# --- dashboard --------------------------------------------------------------------------------


def exported_names() -> set[str]:
    """Every sample name /metrics can carry (counters also under their upstream bare names)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_dashboard_queries_only_metrics_we_export() -> None:
    dashboard = json.loads((CHART / "dashboards" / "metacollector.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        m
        for e in exprs
        for m in re.findall(r"\b((?:meta_collector|metacollector|process)_[a-z_]+)\b", e)
    }
    assert used and used <= exported_names(), used - exported_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "subscribers",
        "events sent",
        "api server",
        "watch restarts",
        "latency",
        "mailbox",
        "memory",
        "cpu",
    ):
        assert topic in titles, topic
    for expr in exprs:  # every panel follows the job selector
        assert '$job"' in expr, expr


# --- linters ----------------------------------------------------------------------------------


def test_yamllint_clean() -> None:
    proc = subprocess.run(
        [
            str(BIN / "yamllint"),
            "--strict",
            "k8s",
            "helm/metacollector/values.yaml",
            "helm/metacollector/Chart.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_clean_and_image_contract() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["metacollector"]' in text and 'CMD ["run"]' in text
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    runtime = text[text.rindex("\nFROM ") :]
    assert "RUN " not in runtime  # nothing executed through a shell in the final image


def test_docker_context_has_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    text = (ROOT / "Dockerfile").read_text()
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
        for src in line.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src not in ignored and src.split("/")[0] not in ignored, src
