"""Certificate rotation as a Secret volume update does it, while a subscriber streams."""

from __future__ import annotations

from pathlib import Path

import grpc
import trio
import trustme

from metacollector import metrics
from tests.support.env import Env, environment, local_settings, needs_emulator
from tests.support.grpc_watch import GrpcWatch
from tests.support.scenarios import converged
from tests.support.secret_volume import SecretVolume

pytestmark = needs_emulator

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a new handshake, not a shared one


def server_files(ca: trustme.CA) -> dict[str, bytes]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return {"tls.crt": cert.cert_chain_pems[0].bytes(), "tls.key": cert.private_key_pem.bytes()}


def trusting(ca: trustme.CA) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())


def watch(env: Env, ca: trustme.CA) -> GrpcWatch:
    """A node-0 subscriber on its own connection, trusting only ``ca``."""
    target = f"localhost:{env.collector.grpc_port}"
    w = GrpcWatch(target, "node-0", credentials=trusting(ca), options=OWN_CONNECTION).start()
    env.watches.append(w)
    return w


async def reloads(result: str, above: float) -> None:
    counter = metrics.TLS_RELOADS.labels("grpc_server", result)
    with trio.fail_after(10):
        while counter._value.get() <= above:
            await trio.sleep(0.01)


async def test_rotation_keeps_streams_and_serves_the_new_certificate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    volume = SecretVolume(tmp_path / "tls", server_files(old_ca))
    settings = local_settings(
        server_cert=volume.path("tls.crt"),
        server_key=volume.path("tls.key"),
        tls_reload_interval=0.05,
    )
    ok = metrics.TLS_RELOADS.labels("grpc_server", "ok")
    failed = metrics.TLS_RELOADS.labels("grpc_server", "failed")
    async with environment(nursery, settings, nodes=2, pods_per_node=2) as env:
        await env.ready()
        streaming = watch(env, old_ca)
        await converged(env, streaming)

        before = ok._value.get()
        volume.update(server_files(new_ca))
        await reloads("ok", before)
        # A new connection verifies against the new CA; one trusting only the old CA fails.
        await converged(env, watch(env, new_ca))
        assert await watch(env, old_ca).wait_ended() == grpc.StatusCode.UNAVAILABLE
        # The stream opened before the rotation was not interrupted and still gets changes.
        ns = env.unique("rot")
        await env.cluster.namespace(ns)
        await env.cluster.pod(ns, "after-rotation", "node-0")
        await converged(env, streaming)
        assert streaming.error is None and not streaming.done.is_set()

        # A corrupt replacement is refused: the certificate of the new CA stays in service.
        before = failed._value.get()
        volume.update({"tls.crt": b"not a certificate", "tls.key": b"not a key"})
        await reloads("failed", before)
        await converged(env, watch(env, new_ca))
        assert await watch(env, old_ca).wait_ended() == grpc.StatusCode.UNAVAILABLE
        await env.cluster.pod(ns, "after-corruption", "node-0")
        await converged(env, streaming)
        assert streaming.error is None and not streaming.done.is_set()
