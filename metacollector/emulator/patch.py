"""JSON merge patch (RFC 7386), also used for strategic-merge patches.

Simplification: strategic merge patch is applied as a merge patch, so lists are replaced
rather than merged by key. Enough for metadata, labels, annotations, status and scalar spec
fields, which is what the emulator's clients patch.
"""

from __future__ import annotations

import copy
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$patch" or key.startswith("$setElementOrder"):
            continue
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
