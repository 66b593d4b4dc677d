"""No ``Any`` on the core path (issue 17): mypy's per-module setting is what enforces it; this
test keeps the setting from being dropped or narrowed."""

from __future__ import annotations

import tomllib
from pathlib import Path

CORE_PATH = {
    "metacollector.events",
    "metacollector.kube.reflector",
    "metacollector.hub",
    "metacollector.reducer",
    "metacollector.state",
    "metacollector.render",
    "metacollector.model",
    "metacollector.changes",
    "metacollector.subscriptions",
}


def test_core_path_modules_disallow_any() -> None:
    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    mypy = config["tool"]["mypy"]
    assert mypy["strict"] is True
    strict_any = [
        set(o["module"])
        for o in mypy["overrides"]
        if o.get("disallow_any_expr") and o.get("disallow_any_explicit")
    ]
    assert strict_any and set.union(*strict_any) >= CORE_PATH
