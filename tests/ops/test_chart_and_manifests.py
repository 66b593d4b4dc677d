"""Chart, manifests and Dockerfile: helm lint/template, Kubernetes schemas, yamllint, hadolint,
security settings, and agreement of ports, probe paths and flags with the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from metacollector.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "metacollector"
BIN = Path(sys.executable).parent
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
    "monitoring-cloudevents": [
        "--set",
        "serviceMonitor.create=true",
        "--set",
        "serviceMonitor.labels.release=prom",
        "--set",
        "grafana.dashboards.enabled=true",
        "--set",
        "cloudevents.sink=http://broker-ingress.knative-eventing.svc/default/default",
    ],
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


def manifests() -> list[dict[str, Any]]:
    files = sorted(
        f for f in (ROOT / "k8s").glob("*.yaml") if f.name != "falco-values-example.yaml"
    )
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def test_helm_lint(helm: Path) -> None:
    for name, args in VALUE_SETS.items():
        proc = subprocess.run(
            [str(helm), "lint", str(CHART), "--strict", *args], capture_output=True, text=True
        )
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_rendered_objects_validate_and_are_locked_down(
    helm: Path, value_set: str, tmp_path: Path
) -> None:
    docs = render(helm, VALUE_SETS[value_set])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    check_security(docs)
    plain = [d for d in docs if d["kind"] != "ServiceMonitor"]  # CRD: no built-in schema
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(plain))
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.31.0", str(rendered)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    if value_set == "tls-mtls-binding":
        assert "--broker-client-ca=/etc/metacollector/client-ca/ca.crt" in args
        assert "--broker-node-binding" in args
    if value_set == "monitoring-cloudevents":
        assert any(a.startswith("--cloudevents-sink=") for a in args)
        assert "ConfigMap" in kinds and "ServiceMonitor" in kinds


def test_manifests_validate_and_are_locked_down(tmp_path: Path) -> None:
    docs = manifests()
    check_security(docs)
    files = [
        str(f)
        for f in (ROOT / "k8s").glob("*.yaml")
        if f.name not in ("servicemonitor.yaml", "falco-values-example.yaml")
    ]
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.31.0", *files],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")


def check_security(docs: list[dict[str, Any]]) -> None:
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc.get("privileged") is not True
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == SEVEN


def run_flags() -> dict[str, Any]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    run = sub.choices["run"]  # type: ignore[attr-defined]
    return {opt: action.default for action in run._actions for opt in action.option_strings}


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_ports_probes_and_flags_agree_with_cli(helm: Path, source: str) -> None:
    docs = (
        render(helm, VALUE_SETS["tls-mtls-binding"] + VALUE_SETS["monitoring-cloudevents"])
        if source == "chart"
        else manifests()
    )
    flags = run_flags()
    container = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "run"
    values = {}
    for arg in container["args"][1:]:
        name, _, value = arg.partition("=")
        assert name in flags, f"{source}: {name} is not a flag of `metacollector run`"
        values[name] = value
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"broker-grpc": 45000, "metrics": 8080, "health-probe": 8081}
    for flag, port in (
        ("--broker-bind-address", "broker-grpc"),
        ("--metrics-bind-address", "metrics"),
        ("--health-probe-bind-address", "health-probe"),
    ):
        assert values[flag] == flags[flag] == f":{ports[port]}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health-probe"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health-probe"}
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports


def test_yamllint_clean() -> None:
    proc = subprocess.run(
        [
            str(BIN / "yamllint"),
            "-s",
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
        [str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["metacollector"]' in text and 'CMD ["run"]' in text
    assert "USER 65532:65532" in text and "EXPOSE 45000 8080 8081" in text
    assert text.count("FROM ") >= 2  # multi-stage
