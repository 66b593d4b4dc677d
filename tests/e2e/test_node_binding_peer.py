"""Peer-address node binding over loopback: emulator pods whose podIP is a 127.0.0.x address,
watched by our h2 client bound to that source address (grpcio cannot pick a source address).

Linux routes all of 127.0.0.0/8 to loopback, so each 127.0.0.x stands in for one pod's IP."""

from __future__ import annotations

import trio

from metacollector import metrics
from metacollector.binding import NodeBinding, peer_may_watch
from metacollector.grpc.client import WatchEnded, open_watch
from metacollector.proto import metadata_pb2 as pb
from tests.support.env import Env, environment, local_settings, needs_emulator

pytestmark = needs_emulator

PERMISSION_DENIED = 7
FALCO_IP, CONTROL_IP, STRANGER_IP = "127.0.0.5", "127.0.0.6", "127.0.0.9"


def denials() -> float:
    return metrics.LIMIT_HITS.labels("node_binding")._value.get()  # type: ignore[no-any-return]


async def first_events(env: Env, node: str, source: str) -> list[pb.Event]:
    """The first batch of the initial sync of ``node``, watched from ``source``."""
    with trio.fail_after(10):
        async with open_watch(
            "127.0.0.1", env.collector.grpc_port, node, local_address=source
        ) as watch:
            async for batch in watch.messages():
                return [pb.Event.FromString(m) for m in batch]
    raise AssertionError("stream ended without events")


async def refused(env: Env, node: str, source: str) -> str:
    """The PERMISSION_DENIED message a watch of ``node`` from ``source`` ends with."""
    with trio.fail_after(10):
        async with open_watch(
            "127.0.0.1", env.collector.grpc_port, node, local_address=source
        ) as watch:
            try:
                async for _ in watch.messages():
                    raise AssertionError(f"{source} was served node {node}")
            except WatchEnded as ended:
                assert ended.status == PERMISSION_DENIED, ended
                return ended.message
    raise AssertionError("unreachable")


async def place_pod(env: Env, ns: str, name: str, node: str, ip: str) -> str:
    """A pod on ``node`` with podIP ``ip`` (set through the status subresource, as the kubelet
    does); returns its uid once the collector's state has it with that IP."""
    pod = await env.cluster.pod(ns, name, node)
    await env.cluster.patch("Pod", ns, name, {"status": {"podIP": ip}}, "status")
    state = env.collector.hub.state
    with trio.fail_after(10):
        while not peer_may_watch(state, node, ip):
            await trio.sleep(0.01)
    return str(pod["metadata"]["uid"])


async def test_peer_address_binds_a_pod_to_its_node(nursery: trio.Nursery) -> None:
    settings = local_settings(
        node_binding=NodeBinding.PEER_ADDRESS,
    )
    async with environment(nursery, settings, nodes=2, pods_per_node=1) as env:
        await env.ready()
        ns = env.unique("falco")
        await env.cluster.namespace(ns)
        falco = await place_pod(env, ns, "falco-a", "node-0", FALCO_IP)
        control = await place_pod(env, ns, "falco-b", "node-1", CONTROL_IP)

        # The right node is served: its initial sync carries the pod itself.
        assert falco in {e.uid for e in await first_events(env, "node-0", FALCO_IP)}
        assert control in {e.uid for e in await first_events(env, "node-1", CONTROL_IP)}

        # Another node, or an address that is no pod at all, is refused and counted.
        before = denials()
        assert "node-1" in await refused(env, "node-1", FALCO_IP)
        assert CONTROL_IP in await refused(env, "node-0", CONTROL_IP)
        assert STRANGER_IP in await refused(env, "node-0", STRANGER_IP)
        assert denials() == before + 3

        # Rescheduled: the pod is deleted and its replacement lands on node-1 with the same IP.
        # The next Watch call for node-0 is refused; node-1 is served.
        await env.cluster.delete("Pod", ns, "falco-a")
        state = env.collector.hub.state
        with trio.fail_after(10):
            while peer_may_watch(state, "node-0", FALCO_IP):
                await trio.sleep(0.01)
        moved = await place_pod(env, ns, "falco-a2", "node-1", FALCO_IP)
        await refused(env, "node-0", FALCO_IP)
        assert moved in {e.uid for e in await first_events(env, "node-1", FALCO_IP)}
        assert denials() == before + 4


async def test_host_network_pod_carries_the_node_ip(nursery: trio.Nursery) -> None:
    """A host-network pod's podIP is its node's IP: a sensor on the node's network (Falco's
    DaemonSet in host-network mode) is served from that address."""
    settings = local_settings(
        node_binding=NodeBinding.PEER_ADDRESS,
    )
    async with environment(nursery, settings, nodes=2, pods_per_node=0) as env:
        await env.ready()
        ns = env.unique("hostnet")
        await env.cluster.namespace(ns)
        node_ip = "127.0.0.7"  # node-1's IP, carried by its host-network pods
        await place_pod(env, ns, "kube-proxy", "node-1", node_ip)
        await place_pod(env, ns, "falco", "node-1", node_ip)
        assert await first_events(env, "node-1", node_ip)
        await refused(env, "node-0", node_ip)
