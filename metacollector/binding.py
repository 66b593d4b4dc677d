"""Node binding: which node's metadata one gRPC peer may watch (issue 19).

Two modes besides off. ``certificate``: the node must be named in the client certificate (CN or
DNS SAN); needs mTLS. ``peer-address``: the connection's source address must be the IP of a pod
scheduled on the node, which for host-network pods (Falco's DaemonSet in host-network mode) is
the node's own IP. Decided on every Watch call against the current cluster state, so a pod that
moved to another node loses access to the old one at its next call. Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports NodeBinding; it must not pull in the state
    from metacollector.state import ClusterState


class NodeBinding(enum.StrEnum):
    OFF = "off"
    CERTIFICATE = "certificate"
    PEER_ADDRESS = "peer-address"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def cert_names(peer_cert: dict[str, Any] | None) -> set[str]:
    """The CN and DNS SANs of a client certificate (as returned by SSLSocket.getpeercert)."""
    if not peer_cert:
        return set()
    names = {
        value for rdn in peer_cert.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names.update(value for kind, value in peer_cert.get("subjectAltName", ()) if kind == "DNS")
    return names


def parse_ip(text: str) -> IPAddress | None:
    """An address as compared: IPv4-mapped IPv6 (a dual-stack listener's view of an IPv4
    peer) as IPv4, IPv6 zone ids dropped; None for anything that is not an IP."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def node_addresses(state: ClusterState, node: str) -> Iterable[str]:
    """The addresses the collector knows on ``node``: the podIPs of the pods scheduled there
    (host-network pods carry the node's IP). O(pods on the node), read-only."""
    pods = state.pods
    for uid in state.pods_by_node.get(node, ()):
        ip = pods[uid].pod.status.podIP
        if ip:
            yield ip


def peer_may_watch(state: ClusterState, node: str, peer_host: str | None) -> bool:
    """Whether a connection from ``peer_host`` may watch ``node`` (peer-address binding)."""
    peer = parse_ip(peer_host or "")
    if peer is None or not node:
        return False
    return any(parse_ip(ip) == peer for ip in node_addresses(state, node))


def refusal(
    mode: NodeBinding,
    state: ClusterState,
    node: str,
    peer: tuple[str, int] | None,
    peer_cert: dict[str, Any] | None,
) -> str | None:
    """Why this peer may not watch ``node`` under ``mode`` (the PERMISSION_DENIED message), or
    None when it may."""
    if mode is NodeBinding.CERTIFICATE and node not in cert_names(peer_cert):
        return f"client certificate may not watch node {node!r}"
    if mode is NodeBinding.PEER_ADDRESS and not peer_may_watch(
        state, node, peer[0] if peer else None
    ):
        host = peer[0] if peer else "unknown"
        return f"peer address {host} is not a pod on node {node!r}; may not watch it"
    return None
