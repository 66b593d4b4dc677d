"""Regenerate metacollector/proto/metadata_pb2.py(i) from proto/metadata.proto.

Run `python -m metacollector.proto.generate` (needs grpcio-tools, from the `test` extra).
`--check` exits 1 when the checked-in module differs from a fresh generation.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = pathlib.Path(__file__).resolve().parent
OUTPUTS = ("metadata_pb2.py", "metadata_pb2.pyi")


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO_DIR / "metadata.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def stale_outputs() -> list[str]:
    """Names of checked-in generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        return [
            name
            for name in OUTPUTS
            if not (OUT_DIR / name).exists()
            or (pathlib.Path(tmp) / name).read_bytes() != (OUT_DIR / name).read_bytes()
        ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_outputs()
        if stale:
            print("stale generated files: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
