"""Reading the collector's Prometheus counters in-process (one registry per process)."""

from __future__ import annotations

from metacollector.metrics import REGISTRY


def counted(sample: str, **labels: str) -> float:
    """The sum of ``sample`` (e.g. ``metacollector_relists_total``) over every child whose
    labels include ``labels``."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )
