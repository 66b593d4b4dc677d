"""An optional memory set-up: glibc malloc on transparent huge pages, and what this process has.

At 150,000 pods a cluster change is bound by touching cold memory (the pod's previous version,
its entry, the node's mailbox). A heap of most of a gigabyte on 4 KiB pages has far more page
table entries than the TLB holds, so a cold access usually walks the page table too.
With ``PYTHONMALLOC=malloc`` objects come from glibc's malloc instead of pymalloc's arenas, and
``glibc.malloc.hugetlb=1`` has malloc ask the kernel for transparent huge pages (2 MiB,
``madvise``). Measured (bench/README.md, Reducer and Scale run 5): the reducer alone gains, the
whole collector at 5,000 nodes does not (its other work allocates more than it looks up) and
holds more RSS, so the image keeps CPython's allocator and this stays an operator's choice.
Both variables are read when the interpreter starts; the collector logs ``describe()`` at start.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Final

HUGE_PAGES_ENV: Final = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
_THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def describe() -> dict[str, str]:
    """This process's allocator and the kernel's huge page mode (``never`` turns them off)."""
    try:
        modes = _THP_MODE.read_text().split()
        mode = next((m.strip("[]") for m in modes if m.startswith("[")), "unknown")
    except OSError:
        mode = "unavailable"
    return {
        "allocator": "malloc" if os.environ.get("PYTHONMALLOC") == "malloc" else "pymalloc",
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepage": mode,
    }


def environment(base: Mapping[str, str], huge_pages: bool) -> dict[str, str]:
    """``base`` with the huge-page settings, or without them (CPython's pymalloc)."""
    env = {k: v for k, v in base.items() if k not in HUGE_PAGES_ENV}
    if huge_pages:
        env.update(HUGE_PAGES_ENV)
    return env
