"""The pure node-binding decision: which peer may watch which node."""

from __future__ import annotations

import pytest

from metacollector.binding import NodeBinding, parse_ip, peer_may_watch, refusal
from metacollector.cli import build_parser, settings_from_args
from metacollector.reducer import Reducer
from metacollector.state import ClusterState
from tests.support.builders import pod


def run_settings(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["run", *argv]))


def cluster() -> ClusterState:
    reducer = Reducer(ClusterState())
    reducer.apply("ADDED", "Pod", pod("falco-1", "u1", node="n1", ip="10.0.1.5"))
    reducer.apply("ADDED", "Pod", pod("falco-2", "u2", node="n2", ip="fd00::2:5"))
    reducer.apply("ADDED", "Pod", pod("pending", "u3", node="n2"))  # no IP yet
    return reducer.state


@pytest.mark.parametrize(
    ("node", "peer", "allowed"),
    [
        ("n1", "10.0.1.5", True),
        ("n1", "::ffff:10.0.1.5", True),  # an IPv4 peer seen by a dual-stack listener
        ("n2", "10.0.1.5", False),  # another node's pod
        ("n2", "fd00:0:0:0:0:0:2:5", True),  # IPv6, spelled differently
        ("n2", "", False),  # the pending pod's empty podIP matches nothing
        ("n1", "not-an-ip", False),
        ("n9", "10.0.1.5", False),  # a node without pods
        ("", "10.0.1.5", False),
    ],
)
def test_peer_may_watch(node: str, peer: str, allowed: bool) -> None:
    assert peer_may_watch(cluster(), node, peer) is allowed


def test_refusal_by_mode() -> None:
    state = cluster()
    cert = {"subject": ((("commonName", "n1"),),), "subjectAltName": (("DNS", "n2"),)}
    assert refusal(NodeBinding.OFF, state, "n2", ("10.0.1.5", 1), None) is None
    assert refusal(NodeBinding.CERTIFICATE, state, "n2", None, cert) is None
    assert refusal(NodeBinding.CERTIFICATE, state, "n3", None, cert) is not None
    assert refusal(NodeBinding.PEER_ADDRESS, state, "n1", ("10.0.1.5", 1), None) is None
    assert refusal(NodeBinding.PEER_ADDRESS, state, "n1", None, cert) is not None
    assert parse_ip("fe80::1%eth0") == parse_ip("fe80::1")


def test_flag_forms() -> None:
    assert run_settings().node_binding is NodeBinding.OFF
    assert run_settings("--broker-node-binding=peer-address").node_binding is (
        NodeBinding.PEER_ADDRESS
    )  # needs no client certificates
    with pytest.raises(SystemExit):
        run_settings("--broker-node-binding=bogus")
