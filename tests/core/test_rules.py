"""Every rule of SPEC section 2, at the core: reducer + mailboxes, no I/O."""

from __future__ import annotations

from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS
from tests.support import builders as b
from tests.support import oracle
from tests.support.harness import Core, Subscriber


def refs_of(ev: pb.Event) -> dict[str, list[str]]:
    return {k: list(v.list) for k, v in ev.refs.resources.items()}


def kinds_uids(events: list[pb.Event]) -> list[tuple[str, str, str]]:
    return sorted((e.reason, e.kind, e.uid) for e in events)


def cluster() -> Core:
    """Scenario 4's cluster: Deployment (2 replicas) + 2 Services, DaemonSet, bare pod,
    bare ReplicaSet, ReplicationController; pods on n1 and n2."""
    core = Core()
    a = core.apply
    a("ADDED", "Namespace", b.namespace("shop", "ns-shop"))
    a("ADDED", "Namespace", b.namespace("kube-system", "ns-ks"))
    a(
        "ADDED",
        "Deployment",
        b.metadata_only("Deployment", "web", "dep-web", "shop", {"app": "web"}),
    )
    a(
        "ADDED",
        "ReplicaSet",
        b.metadata_only(
            "ReplicaSet",
            "web-7d9f",
            "rs-web",
            "shop",
            {"app": "web"},
            [b.owner("Deployment", "dep-web")],
        ),
    )
    a("ADDED", "ReplicaSet", b.metadata_only("ReplicaSet", "bare-rs", "rs-bare", "shop"))
    a("ADDED", "DaemonSet", b.metadata_only("DaemonSet", "agent", "ds-agent", "kube-system"))
    a(
        "ADDED",
        "ReplicationController",
        b.metadata_only("ReplicationController", "legacy", "rc-legacy", "shop"),
    )
    a("ADDED", "Service", b.service("web", "svc-web", selector={"app": "web"}))
    a("ADDED", "Service", b.service("web-b", "svc-web2", selector={"tier": "front"}))
    a("ADDED", "Service", b.service("headless", "svc-nosel"))
    a("ADDED", "Service", b.service("other", "svc-other", selector={"app": "db"}))
    for i, node in enumerate(["n1", "n2"]):
        a(
            "ADDED",
            "Pod",
            b.pod(
                f"web-{i}",
                f"pod-web-{i}",
                node=node,
                labels={"app": "web", "tier": "front"},
                owners=[b.owner("ReplicaSet", "rs-web")],
                ip=f"10.0.0.{i + 1}",
                generate_name="web-7d9f-",
            ),
        )
        a(
            "ADDED",
            "Pod",
            b.pod(
                f"agent-{i}",
                f"pod-ds-{i}",
                namespace="kube-system",
                node=node,
                owners=[b.owner("DaemonSet", "ds-agent")],
            ),
        )
    a("ADDED", "Pod", b.pod("bare", "pod-bare", node="n1"))
    a(
        "ADDED",
        "Pod",
        b.pod("rs-pod", "pod-rs", node="n1", owners=[b.owner("ReplicaSet", "rs-bare")]),
    )
    a(
        "ADDED",
        "Pod",
        b.pod(
            "rc-pod", "pod-rc", node="n1", owners=[b.owner("ReplicationController", "rc-legacy")]
        ),
    )
    return core


def assert_converged(core: Core, sub: Subscriber, kinds: frozenset[str]) -> None:
    core.drain(sub)
    expected = oracle.view(core.reducer.state.by_kind(), sub.mailbox.node, kinds)
    assert sub.table == expected


def test_initial_sync_exact_for_node() -> None:
    core = cluster()
    sub = core.subscribe("n1", FALCO_KINDS)
    events = core.drain(sub)
    assert all(e.reason == "Create" for e in events)
    assert {(e.kind, e.uid) for e in events} == {
        ("Pod", "pod-web-0"),
        ("Pod", "pod-ds-0"),
        ("Pod", "pod-bare"),
        ("Pod", "pod-rs"),
        ("Pod", "pod-rc"),
        ("Namespace", "ns-shop"),
        ("Namespace", "ns-ks"),
        ("ReplicaSet", "rs-web"),
        ("ReplicaSet", "rs-bare"),
        ("Deployment", "dep-web"),
        ("ReplicationController", "rc-legacy"),
        ("Service", "svc-web"),
        ("Service", "svc-web2"),
    }
    web = sub.table["pod-web-0"]
    assert refs_of(web) == {
        "Namespace": ["ns-shop"],
        "ReplicaSet": ["rs-web"],
        "Deployment": ["dep-web"],
        "Service": ["svc-web", "svc-web2"],
    }
    assert web.status == '{"podIP":"10.0.0.1"}'
    assert web.meta == (
        '{"generateName":"web-7d9f-","labels":{"app":"web","tier":"front"},'
        '"name":"web-0","namespace":"shop","uid":"pod-web-0"}'
    )
    assert refs_of(sub.table["pod-ds-0"]) == {
        "Namespace": ["ns-ks"],
        "DaemonSet": ["ds-agent"],
        "Service": [],
    }
    assert refs_of(sub.table["pod-bare"]) == {"Namespace": ["ns-shop"], "Service": []}
    assert refs_of(sub.table["pod-rc"])["ReplicationController"] == ["rc-legacy"]
    assert sub.table["ns-shop"].meta == '{"name":"shop","uid":"ns-shop"}'
    assert_converged(core, sub, sub.mailbox.kinds)


def test_daemonset_only_for_subscribers_asking_for_it() -> None:
    core = cluster()
    asking = core.subscribe("n1", [*FALCO_KINDS, "DaemonSet"])
    falco = core.subscribe("n1", FALCO_KINDS)  # what Falco asks for: no DaemonSet
    assert ("DaemonSet", "ds-agent") in {(e.kind, e.uid) for e in core.drain(asking)}
    synced = core.drain(falco)
    assert ("Pod", "pod-ds-0") in {(e.kind, e.uid) for e in synced}  # the DaemonSet's pod
    assert "DaemonSet" not in {e.kind for e in synced}
    # a DaemonSet change reaches the subscriber asking for it (the control), not the other
    relabeled = b.metadata_only("DaemonSet", "agent", "ds-agent", "kube-system", {"v": "2"})
    core.apply("MODIFIED", "DaemonSet", relabeled)
    assert [(e.reason, e.uid) for e in core.drain(asking)] == [("Update", "ds-agent")]
    assert core.drain(falco) == []


def test_unknown_node_and_unknown_kinds_get_nothing() -> None:
    core = cluster()
    assert core.drain(core.subscribe("nope")) == []
    assert core.drain(core.subscribe("n1", ["Secret", "ConfigMap"])) == []


def test_replica_controller_alias_receives_replicationcontrollers() -> None:
    core = cluster()
    events = core.drain(core.subscribe("n1", ["ReplicaController"]))
    assert [(e.kind, e.uid) for e in events] == [("ReplicationController", "rc-legacy")]


def test_selectorless_service_never_sent() -> None:
    core = cluster()
    for node in ("n1", "n2", "n3"):
        sub = core.subscribe(node)
        core.drain(sub)
        assert "svc-nosel" not in sub.table


def test_owner_by_owner_reference_not_name_prefix() -> None:
    core = Core()
    core.apply("ADDED", "Namespace", b.namespace("shop", "ns"))
    core.apply("ADDED", "ReplicaSet", b.metadata_only("ReplicaSet", "web", "rs-1", "shop"))
    # Name starts like the ReplicaSet's, but no ownerReference: not owned.
    core.apply("ADDED", "Pod", b.pod("web-abcde", "p1", node="n1"))
    # Owned through a non-controller reference only: not a controlling owner either.
    core.apply(
        "ADDED",
        "Pod",
        b.pod("x", "p2", node="n1", owners=[b.owner("ReplicaSet", "rs-1", controller=False)]),
    )
    sub = core.subscribe("n1")
    core.drain(sub)
    assert "rs-1" not in sub.table
    assert refs_of(sub.table["p1"]) == {"Namespace": ["ns"], "Service": []}
    assert refs_of(sub.table["p2"]) == {"Namespace": ["ns"], "Service": []}


def test_relabel_ip_assignment_and_status_churn() -> None:
    core = cluster()
    sub = core.subscribe("n1", FALCO_KINDS)
    core.drain(sub)
    core.apply("MODIFIED", "Pod", b.pod("bare", "pod-bare", node="n1", labels={"x": "y"}, rv="9"))
    [ev] = core.drain(sub)
    assert (ev.reason, ev.uid) == ("Update", "pod-bare")
    assert ev.meta == '{"labels":{"x":"y"},"name":"bare","namespace":"shop","uid":"pod-bare"}'
    assert ev.status == "{}" and refs_of(ev) == {"Namespace": ["ns-shop"], "Service": []}
    core.apply(
        "MODIFIED",
        "Pod",
        b.pod("bare", "pod-bare", node="n1", labels={"x": "y"}, ip="10.9.9.9", rv="10"),
    )
    [ev] = core.drain(sub)
    assert ev.reason == "Update" and ev.status == '{"podIP":"10.9.9.9"}'
    assert ev.meta.startswith('{"labels":{"x":"y"}')  # full payload, not a diff
    core.apply(
        "MODIFIED",
        "Pod",
        b.pod(
            "bare",
            "pod-bare",
            node="n1",
            labels={"x": "y"},
            ip="10.9.9.9",
            rv="11",
            phase="Succeeded",
        ),
    )
    assert core.drain(sub) == []


def test_second_subscriber_gets_creates_only_itself() -> None:
    core = cluster()
    first = core.subscribe("n1")
    core.drain(first)
    second = core.subscribe("n1")
    assert core.drain(first) == []
    assert len(core.drain(second)) == len(first.table)
    assert second.table == first.table


def test_pod_deleted_releases_owners_namespace_services_per_node() -> None:
    core = cluster()
    n1, n2 = core.subscribe("n1", FALCO_KINDS), core.subscribe("n2", FALCO_KINDS)
    core.drain(n1), core.drain(n2)
    core.apply(
        "DELETED",
        "Pod",
        b.pod("rs-pod", "pod-rs", node="n1", owners=[b.owner("ReplicaSet", "rs-bare")]),
    )
    assert kinds_uids(core.drain(n1)) == [
        ("Delete", "Pod", "pod-rs"),
        ("Delete", "ReplicaSet", "rs-bare"),
    ]
    assert core.drain(n2) == []
    # Last web pod on n2 goes: its ReplicaSet, Deployment, Services and namespace leave n2.
    core.apply("DELETED", "Pod", b.pod("web-1", "pod-web-1", node="n2"))
    assert kinds_uids(core.drain(n2)) == [
        ("Delete", "Deployment", "dep-web"),
        ("Delete", "Namespace", "ns-shop"),
        ("Delete", "Pod", "pod-web-1"),
        ("Delete", "ReplicaSet", "rs-web"),
        ("Delete", "Service", "svc-web"),
        ("Delete", "Service", "svc-web2"),
    ]
    assert core.drain(n1) == []
    assert_converged(core, n1, n1.mailbox.kinds)
    assert_converged(core, n2, n2.mailbox.kinds)


def test_deployment_scaled_to_zero() -> None:
    core = cluster()
    subs = [core.subscribe(n, FALCO_KINDS) for n in ("n1", "n2")]
    for s in subs:
        core.drain(s)
    for i, node in enumerate(["n1", "n2"]):
        core.apply("DELETED", "Pod", b.pod(f"web-{i}", f"pod-web-{i}", node=node))
    for s in subs:
        got = {(e.reason, e.kind, e.uid) for e in core.drain(s)}
        assert ("Delete", "Deployment", "dep-web") in got
        assert ("Delete", "ReplicaSet", "rs-web") in got
        assert_converged(core, s, s.mailbox.kinds)


def test_replacement_pod_on_another_node() -> None:
    core = cluster()
    n1, n3 = core.subscribe("n1", FALCO_KINDS), core.subscribe("n3", FALCO_KINDS)
    core.drain(n1), core.drain(n3)
    core.apply("DELETED", "Pod", b.pod("rc-pod", "pod-rc", node="n1"))
    core.apply(
        "ADDED",
        "Pod",
        b.pod(
            "rc-pod2", "pod-rc2", node="n3", owners=[b.owner("ReplicationController", "rc-legacy")]
        ),
    )
    assert kinds_uids(core.drain(n1)) == [
        ("Delete", "Pod", "pod-rc"),
        ("Delete", "ReplicationController", "rc-legacy"),
    ]
    assert kinds_uids(core.drain(n3)) == [
        ("Create", "Namespace", "ns-shop"),
        ("Create", "Pod", "pod-rc2"),
        ("Create", "ReplicationController", "rc-legacy"),
    ]


def test_pod_moved_between_nodes_by_update() -> None:
    core = cluster()
    n1, n2 = core.subscribe("n1"), core.subscribe("n2")
    core.drain(n1), core.drain(n2)
    core.apply("MODIFIED", "Pod", b.pod("bare", "pod-bare", node="n2", rv="5"))
    assert ("Delete", "Pod", "pod-bare") in kinds_uids(core.drain(n1))
    assert kinds_uids(core.drain(n2)) == [("Create", "Pod", "pod-bare")]
    assert_converged(core, n1, n1.mailbox.kinds)


def test_service_selector_matches_nothing() -> None:
    core = cluster()
    subs = [core.subscribe(n, FALCO_KINDS) for n in ("n1", "n2")]
    for s in subs:
        core.drain(s)
    core.apply("MODIFIED", "Service", b.service("web", "svc-web", selector={"app": "none"}, rv="7"))
    for s in subs:
        events = core.drain(s)
        assert ("Delete", "Service", "svc-web") in kinds_uids(events)
        [update] = [e for e in events if e.kind == "Pod"]
        assert update.reason == "Update"
        assert refs_of(update)["Service"] == ["svc-web2"]
        assert_converged(core, s, s.mailbox.kinds)


def test_owner_and_namespace_label_change_updates_nodes_that_hold_them() -> None:
    core = cluster()
    n1, n3 = core.subscribe("n1"), core.subscribe("n3")
    core.drain(n1), core.drain(n3)
    core.apply(
        "MODIFIED",
        "Deployment",
        b.metadata_only("Deployment", "web", "dep-web", "shop", {"app": "web", "v": "2"}, rv="8"),
    )
    core.apply("MODIFIED", "Namespace", b.namespace("shop", "ns-shop", {"team": "a"}))
    assert kinds_uids(core.drain(n1)) == [
        ("Update", "Deployment", "dep-web"),
        ("Update", "Namespace", "ns-shop"),
    ]
    assert core.drain(n3) == []


def test_objects_arriving_after_their_pods() -> None:
    """Pods may arrive before their namespace/owners (kinds are watched independently)."""
    core = Core()
    sub = core.subscribe("n1")
    core.apply(
        "ADDED",
        "Pod",
        b.pod("w", "p", node="n1", labels={"app": "web"}, owners=[b.owner("ReplicaSet", "rs")]),
    )
    core.drain(sub)
    assert refs_of(sub.table["p"]) == {"Namespace": [], "ReplicaSet": ["rs"], "Service": []}
    core.apply("ADDED", "Namespace", b.namespace("shop", "ns"))
    core.apply(
        "ADDED",
        "ReplicaSet",
        b.metadata_only("ReplicaSet", "r", "rs", "shop", owners=[b.owner("Deployment", "d")]),
    )
    core.apply("ADDED", "Deployment", b.metadata_only("Deployment", "d", "d", "shop"))
    core.apply("ADDED", "Service", b.service("s", "s", selector={"app": "web"}))
    core.drain(sub)
    assert refs_of(sub.table["p"]) == {
        "Namespace": ["ns"],
        "ReplicaSet": ["rs"],
        "Deployment": ["d"],
        "Service": ["s"],
    }
    assert set(sub.table) == {"p", "ns", "rs", "d", "s"}
    assert_converged(core, sub, sub.mailbox.kinds)


def test_unscheduled_pod_belongs_to_no_node_until_scheduled() -> None:
    core = cluster()
    sub = core.subscribe("n5")
    core.apply("ADDED", "Pod", b.pod("pending", "pp", node=""))
    assert core.drain(sub) == []
    assert core.drain(core.subscribe("")) == []
    core.apply("MODIFIED", "Pod", b.pod("pending", "pp", node="n5", rv="2"))
    assert kinds_uids(core.drain(sub)) == [
        ("Create", "Namespace", "ns-shop"),
        ("Create", "Pod", "pp"),
    ]


def test_slow_subscriber_merges_instead_of_queueing() -> None:
    core = cluster()
    sub = core.subscribe("n1")
    core.drain(sub)
    for i in range(1000):
        core.apply(
            "MODIFIED",
            "Pod",
            b.pod("bare", "pod-bare", node="n1", labels={"i": str(i)}, rv=str(100 + i)),
        )
    assert len(sub.mailbox.dirty) == 1
    [ev] = core.drain(sub)
    assert '"i":"999"' in ev.meta
    # created and deleted while the subscriber was not looking: nothing at all
    core.apply("ADDED", "Pod", b.pod("blip", "blip", node="n1"))
    core.apply("DELETED", "Pod", b.pod("blip", "blip", node="n1"))
    assert core.drain(sub) == []


def test_take_respects_byte_budget() -> None:
    core = cluster()
    sub = core.subscribe("n1")
    first = sub.mailbox.take(core.reducer.state, 1)
    assert len(first) == 1
    rest = sub.mailbox.take(core.reducer.state, 1 << 20)
    assert len(rest) == 13 - 1 + 1  # every other key of the view (DaemonSet included)
