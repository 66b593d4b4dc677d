"""The optional allocator set-up (metacollector/allocator.py) does give the heap huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metacollector import allocator

# A child that builds ~200 MB of small objects, as the cluster state is, then reports how much
# of its memory is on transparent huge pages and what ``describe`` says.
_CHILD = """
import json, re
from metacollector import allocator
heap = [{"uid": f"pod-{i}", "labels": {"app": str(i)}} for i in range(600_000)]
smaps = open("/proc/self/smaps_rollup").read()
huge_kb = int(re.search(r"AnonHugePages:\\s+(\\d+)", smaps).group(1))
print(json.dumps({"huge_kb": huge_kb, **allocator.describe()}))
"""


def run_child(huge_pages: bool) -> dict[str, object]:
    env = allocator.environment(os.environ, huge_pages)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_environment_sets_or_removes_the_huge_page_settings() -> None:
    base = {"PATH": "/bin", "PYTHONMALLOC": "debug"}
    assert allocator.environment(base, True) == {"PATH": "/bin", **allocator.HUGE_PAGES_ENV}
    assert allocator.environment(base, False) == {"PATH": "/bin"}


@pytest.mark.skipif(
    allocator.describe()["transparent_hugepage"] not in ("always", "madvise"),
    reason="this kernel gives no transparent huge pages",
)
def test_huge_pages_puts_the_heap_on_huge_pages() -> None:
    huge = run_child(True)
    assert huge["allocator"] == "malloc"
    assert huge["glibc_tunables"] == "glibc.malloc.hugetlb=1"
    assert isinstance(huge["huge_kb"], int) and huge["huge_kb"] > 100_000
    python = run_child(False)
    assert python["allocator"] == "pymalloc"
    if allocator.describe()["transparent_hugepage"] == "madvise":
        assert python["huge_kb"] == 0  # pymalloc's arenas never ask for them
