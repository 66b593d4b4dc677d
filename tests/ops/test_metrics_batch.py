"""``metrics.observe_all`` (one histogram update per batch) equals ``observe`` per amount."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from metacollector import metrics

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# amounts on the bounds themselves (a bound is inclusive: le), around them, and beyond the last
AMOUNTS = st.one_of(
    st.sampled_from(BUCKETS),
    st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
)


def _samples(amounts: list[float], batched: bool) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    histogram = Histogram("d", "d", ["name"], buckets=BUCKETS, registry=registry)
    child = histogram.labels("mailbox")
    if batched:
        metrics.observe_all(child, amounts)
    else:
        for amount in amounts:
            child.observe(amount)
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


@given(st.lists(AMOUNTS, max_size=60))
def test_observe_all_equals_observe_per_amount(amounts: list[float]) -> None:
    assert _samples(amounts, batched=True) == _samples(amounts, batched=False)
