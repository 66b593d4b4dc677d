"""Builders for the CloudEvents sink's tests: one ObjectChange of any kind, sink settings."""

from __future__ import annotations

import json

from metacollector.changes import ObjectChange
from metacollector.cloudevents import SinkSettings
from metacollector.testing.receiver import Receiver


def change(
    kind: str,
    reason: str = "Create",
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    node: str = "n1",
) -> ObjectChange:
    name = f"obj-{kind.lower()}"
    ns = "" if kind == "Namespace" else "shop"
    meta = {
        "name": name,
        "uid": uid or f"uid-{kind}",
        **({"namespace": ns} if ns else {}),
        **({"labels": labels} if labels else {}),
    }
    pod = kind == "Pod" and reason != "Delete"
    return ObjectChange(
        reason=reason,
        kind=kind,
        uid=uid or f"uid-{kind}",
        namespace=ns,
        name=name,  # type: ignore[arg-type]
        node=node if kind == "Pod" else "",
        meta=json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
        status=b'{"podIP":"10.0.0.1"}' if pod else None,
        refs={"Namespace": ["ns-uid"], "Service": []} if pod else None,
        observed_at=0.0,
    )


def settings(receiver: Receiver, **kw: object) -> SinkSettings:
    base = {"backoff_initial": 0.05, "backoff_max": 0.2, "flush_timeout": 2.0}
    return SinkSettings(url=receiver.url, source="/metacollector/test", **{**base, **kw})  # type: ignore[arg-type]
