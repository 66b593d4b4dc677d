"""The departure log (metacollector/departures.py) and its two hooks: the reducer reports exactly
the (node, key) pairs that leave a view, and a subscribe queues their Deletes; a subscriber that
keeps its table across reconnects, as Falco's k8smeta does, ends equal to view(node)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metacollector.departures import DepartureLog, Evicted
from metacollector.events import Key, WatchType
from metacollector.model import Object
from metacollector.proto import metadata_pb2 as pb
from metacollector.reducer import Reducer
from metacollector.subscriptions import Mailbox, Subscriptions, selected_kinds
from tests.support import builders as b
from tests.support import oracle
from tests.support.strategies import kind_sets, other_change, pod_change

NODES = ("n1", "n2", "n3")


def pod_key(i: int) -> Key:
    return ("Pod", f"p{i}")


# --- the log alone, on explicit time ------------------------------------------------------------
def test_window_expiry_keeps_an_entry_exactly_window_old_and_drops_it_after() -> None:
    log = DepartureLog(window=600)
    log.record([("n1", pod_key(1)), ("n2", pod_key(2))], now=100.0)
    log.record([("n1", pod_key(3))], now=400.0)
    assert log.for_node("n1", 700.0) == [pod_key(1), pod_key(3)]
    assert len(log) == 3
    assert log.for_node("n1", 700.5) == [pod_key(3)]  # p1 departed 600.5 s ago
    assert log.for_node("n2", 700.5) == []
    assert len(log) == 1
    assert log.for_node("n1", 1000.5) == []
    assert len(log) == 0


def test_a_re_departure_is_held_once_and_restarts_its_window() -> None:
    log = DepartureLog(window=10)
    log.record([("n1", pod_key(1))], now=0.0)
    log.record([("n1", pod_key(2))], now=5.0)
    log.record([("n1", pod_key(1))], now=8.0)  # came back, left again
    assert len(log) == 2
    assert log.for_node("n1", 8.0) == [pod_key(2), pod_key(1)]  # oldest departure first
    assert log.for_node("n1", 16.0) == [pod_key(1)]  # its first record (t=0) expired long ago


def test_node_cap_evicts_that_nodes_oldest_only_and_counts() -> None:
    log = DepartureLog(window=600, max_per_node=3)
    log.record([("n2", pod_key(100))], now=0.0)
    evicted = log.record([("n1", pod_key(i)) for i in range(5)], now=1.0)
    assert evicted == Evicted(node_cap=2, total_cap=0)
    assert log.for_node("n1", 1.0) == [pod_key(2), pod_key(3), pod_key(4)]
    assert log.for_node("n2", 1.0) == [pod_key(100)]
    assert len(log) == 4


def test_total_cap_evicts_the_oldest_of_all_nodes_and_counts() -> None:
    log = DepartureLog(window=600, max_entries=4)
    log.record([("n1", pod_key(1)), ("n2", pod_key(2))], now=0.0)
    log.record([("n1", pod_key(1))], now=1.0)  # re-departure: its t=0 record goes stale
    evicted = log.record([("n3", pod_key(3)), ("n3", pod_key(4)), ("n1", pod_key(5))], now=2.0)
    assert evicted == Evicted(node_cap=0, total_cap=1)  # n2's p2 (t=0) was the oldest live
    assert len(log) == 4
    assert log.for_node("n2", 2.0) == []
    assert log.for_node("n1", 2.0) == [pod_key(1), pod_key(5)]


def test_stale_records_are_compacted_so_memory_follows_entries_held() -> None:
    log = DepartureLog(window=1e9, max_per_node=2)
    for t in range(20_000):  # one node, churning through far more keys than it may hold
        log.record([("n1", pod_key(t))], now=float(t))
    assert len(log) == 2
    assert len(log._order) <= 2 * len(log) + 1024 + 1


def test_window_and_caps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DepartureLog(window=0)


# --- the reducer hook is exact --------------------------------------------------------------------
def views(reducer: Reducer) -> dict[str, set[Key]]:
    return {node: set(reducer.state.view(node)) for node in NODES}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(pod_change(), other_change()), min_size=5, max_size=80))
def test_reducer_reports_exactly_the_keys_that_leave_a_view(
    changes: list[tuple[WatchType, str, Object]],
) -> None:
    reducer = Reducer(track_departures=True)
    before = views(reducer)
    for change_type, kind, obj in changes:
        reducer.apply(change_type, kind, obj)
        after = views(reducer)
        left = [(node, key) for node in NODES for key in before[node] - after[node]]
        assert sorted(reducer.departed) == sorted(left)  # no miss, no extra, no duplicate
        reducer.departed.clear()
        before = after


def test_untracked_reducer_collects_nothing() -> None:
    reducer = Reducer()
    reducer.apply("ADDED", "Pod", b.pod("p1", "pod-1", node="n1"))
    reducer.apply("DELETED", "Pod", b.pod("p1", "pod-1", node="n1"))
    assert reducer.departed == []


# --- subscribe: Deletes after the initial sync; a kept table converges -----------------------------
@dataclass
class Collector:
    """Reducer + departure log + subscriptions, driven as the hub drives them."""

    reducer: Reducer = field(default_factory=lambda: Reducer(track_departures=True))
    log: DepartureLog = field(default_factory=lambda: DepartureLog(window=600))
    now: float = 0.0

    def __post_init__(self) -> None:
        self.subs = Subscriptions(self.reducer.state, self.log)

    def apply(self, change_type: WatchType, kind: str, obj: Object) -> None:
        self.subs.route(self.reducer.apply(change_type, kind, obj).touched, self.now)
        self.log.record(self.reducer.departed, self.now)
        self.reducer.departed.clear()


@dataclass
class PluginTable:
    """k8smeta's table: never cleared; Create/Update upsert, Delete erase (unknown: ignored)."""

    node: str
    kinds: frozenset[str]
    table: dict[str, pb.Event] = field(default_factory=dict)
    mailbox: Mailbox | None = None
    deletes_of_unknown: int = 0

    def drain(self, c: Collector, budget: int = 1 << 30) -> list[pb.Event]:
        assert self.mailbox is not None
        events = [
            pb.Event.FromString(s.message) for s in self.mailbox.take(c.reducer.state, budget)
        ]
        for event in events:
            if event.reason == "Delete":
                if self.table.pop(event.uid, None) is None:
                    self.deletes_of_unknown += 1
            else:
                event.reason = "Create"
                self.table[event.uid] = event
        return events

    def expected(self, c: Collector) -> dict[str, pb.Event]:
        return oracle.view(c.reducer.state.by_kind(), self.node, self.kinds)


def test_reconnect_gets_deletes_after_the_creates_and_a_fresh_subscriber_ignores_them() -> None:
    c = Collector()
    c.apply("ADDED", "Namespace", b.namespace("shop", "ns-shop"))
    c.apply("ADDED", "Service", b.service("s1", "web", selector={"app": "web"}))
    for i in range(3):
        c.apply("ADDED", "Pod", b.pod(f"p{i}", f"pod-{i}", node="n1", labels={"app": "web"}))
    plugin = PluginTable("n1", selected_kinds(["Pod", "Service", "Namespace"]))
    plugin.mailbox = c.subs.subscribe("n1", plugin.kinds, c.now)
    plugin.drain(c)
    c.subs.unsubscribe(plugin.mailbox)  # the plugin goes away, keeping its table
    c.now = 10.0
    c.apply("DELETED", "Pod", b.pod("p0", "pod-0", node="n1", labels={"app": "web"}))
    c.apply("ADDED", "Service", b.service("s1", "web", selector={"app": "gone"}))
    c.apply("ADDED", "Pod", b.pod("p9", "pod-9", node="n1"))
    c.now = 20.0
    plugin.mailbox = c.subs.subscribe("n1", plugin.kinds, c.now)
    events = plugin.drain(c)
    reasons = [e.reason for e in events]
    # 3 pods and the namespace, then pod-0 and the Service web
    assert reasons == ["Create"] * 4 + ["Delete"] * 2
    assert {e.uid for e in events if e.reason == "Delete"} == {"pod-0", "web"}
    assert plugin.table == plugin.expected(c)
    fresh = PluginTable("n1", plugin.kinds)
    fresh.mailbox = c.subs.subscribe("n1", fresh.kinds, c.now)
    fresh.drain(c)
    assert fresh.table == fresh.expected(c) and fresh.deletes_of_unknown == 2
    pods_only = PluginTable("n1", frozenset({"Pod"}))
    pods_only.mailbox = c.subs.subscribe("n1", pods_only.kinds, c.now)
    assert [e.reason for e in pods_only.drain(c)].count("Delete") == 1  # not the Service's


def test_a_departed_key_back_in_the_view_before_sending_is_a_create() -> None:
    c = Collector()
    c.apply("ADDED", "Pod", b.pod("p1", "pod-1", node="n1"))
    c.apply("MODIFIED", "Pod", b.pod("p1", "pod-1", node="n2"))  # left n1
    mailbox = c.subs.subscribe("n1", frozenset({"Pod"}), c.now)
    c.apply("MODIFIED", "Pod", b.pod("p1", "pod-1", node="n1", rv="2"))  # and came back
    assert [s.reason for s in mailbox.take(c.reducer.state, 1 << 20)] == ["Create"]


def test_departures_older_than_the_window_are_not_sent() -> None:
    c = Collector(log=DepartureLog(window=120))
    c.apply("ADDED", "Pod", b.pod("p1", "pod-1", node="n1"))
    c.apply("DELETED", "Pod", b.pod("p1", "pod-1", node="n1"))
    c.now = 120.0
    assert [
        s.reason
        for s in c.subs.subscribe("n1", frozenset({"Pod"}), c.now).take(c.reducer.state, 1 << 20)
    ] == ["Delete"]
    c.now = 120.5
    assert c.subs.subscribe("n1", frozenset({"Pod"}), c.now).take(c.reducer.state, 1 << 20) == []


step = st.one_of(
    st.tuples(st.just("change"), st.one_of(pod_change(), other_change())),
    st.tuples(st.just("change"), st.one_of(pod_change(), other_change())),
    st.tuples(st.just("reconnect"), st.integers(0, 5)),
    st.tuples(st.just("drain"), st.tuples(st.integers(0, 5), st.sampled_from([1, 300, 1 << 20]))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(NODES), kind_sets), min_size=1, max_size=4),
    st.lists(step, min_size=5, max_size=80),
)
def test_tables_kept_across_reconnects_converge(
    plugins: list[tuple[str, list[str]]], steps: list[tuple[str, Any]]
) -> None:
    """Plugins away (unsubscribed) at random moments, mid-sync too, keep their tables; after a
    final reconnect and drain each equals view(node)."""
    c = Collector()
    tables = [PluginTable(node, selected_kinds(kinds)) for node, kinds in plugins]
    for t in tables:
        t.mailbox = c.subs.subscribe(t.node, t.kinds, c.now)
    for action, arg in steps:
        c.now += 1.0
        if action == "change":
            c.apply(*arg)
        else:
            t = tables[(arg if action == "reconnect" else arg[0]) % len(tables)]
            assert t.mailbox is not None
            if action == "drain":
                t.drain(c, arg[1])
            elif t.mailbox in c.subs.by_node.get(t.node, ()):
                c.subs.unsubscribe(t.mailbox)  # away: changes now go unseen
            else:
                t.mailbox = c.subs.subscribe(t.node, t.kinds, c.now)
    for t in tables:
        assert t.mailbox is not None
        c.subs.unsubscribe(t.mailbox)
        t.mailbox = c.subs.subscribe(t.node, t.kinds, c.now)
        t.drain(c)
        assert t.table == t.expected(c)


def test_flags_reach_settings_and_defaults_are_the_logs() -> None:
    from metacollector.cli import build_parser, settings_from_args
    from metacollector.departures import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW, PLUGIN_MAX_BACKOFF
    from metacollector.settings import SettingsError

    parse = build_parser().parse_args
    default = settings_from_args(parse(["run"]))
    assert (default.departure_window, default.departure_max_entries) == (
        DEFAULT_WINDOW,
        DEFAULT_MAX_ENTRIES,
    )
    assert DEFAULT_WINDOW > PLUGIN_MAX_BACKOFF
    given_ = settings_from_args(
        parse(["run", "--departure-window", "900", "--departure-max-entries", "10"])
    )
    assert (given_.departure_window, given_.departure_max_entries) == (900.0, 10)
    with pytest.raises(SettingsError, match="--departure-window"):
        settings_from_args(parse(["run", "--departure-window", "0"]))


async def test_hub_records_departures_and_counts_them_in_metrics() -> None:
    from metacollector import metrics
    from metacollector.events import Delta
    from metacollector.hub import Hub

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0

    evicted_before = sample("metacollector_departures_evicted_total", {"cap": "node"})
    deletes_before = sample("metacollector_departure_deletes_total")
    hub = Hub(departures=DepartureLog(max_per_node=2))
    pods = [b.pod(f"p{i}", f"pod-{i}", node="n1") for i in range(3)]
    hub.apply([Delta("ADDED", "Pod", p) for p in pods])
    hub.apply([Delta("DELETED", "Pod", p) for p in pods])
    assert sample("metacollector_departures_held") == 2
    assert sample("metacollector_departures_evicted_total", {"cap": "node"}) == evicted_before + 1
    mailbox = hub.subscribe("n1", frozenset({"Pod"}))
    assert sample("metacollector_departure_deletes_total") == deletes_before + 2
    sent = mailbox.take(hub.state, 1 << 20)
    assert [(s.reason, pb.Event.FromString(s.message).uid) for s in sent] == [
        ("Delete", "pod-1"),
        ("Delete", "pod-2"),
    ]
