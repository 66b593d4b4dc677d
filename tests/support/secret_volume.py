"""A directory laid out as the kubelet lays out a Secret volume, updated as the kubelet does.

tls.crt -> ..data/tls.crt          (stable paths the program is given)
..data  -> ..2026_01_01_00_00_00.1 (one symlink, atomically renamed on update)
..2026_01_01_00_00_00.1/tls.crt    (each version in its own timestamped directory)
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_versions = itertools.count(1)


class SecretVolume:
    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.update(files)
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def update(self, files: dict[str, bytes]) -> None:
        """Write a new timestamped directory, point ``..data`` at it with one rename, then
        remove the old directory (the kubelet's AtomicWriter sequence)."""
        version = f"..2026_01_01_00_00_00.{next(_versions)}"
        new = self.root / version
        new.mkdir()
        for name, content in files.items():
            (new / name).write_bytes(content)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(version, tmp)
        os.rename(tmp, data)
        if old is not None:
            shutil.rmtree(self.root / old)
