"""End to end, many Watch calls on ONE HTTP/2 connection (as grpcio and grpc-js do by default):
every table exact, none ended with UNAVAILABLE. Against grpcio, and against nghttp2's ``nghttp``
(an independent HTTP/2 implementation; Debian ``nghttp2-client``, installed here when missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trio

from metacollector.grpc.framing import encode_message
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import selected_kinds
from tests.support import oracle
from tests.support.env import Env, needs_emulator, start_env
from tests.support.grpc_watch import FALCO_KINDS, GrpcWatch
from tests.support.scenarios import converged

pytestmark = [needs_emulator, pytest.mark.slow]
NODES, PODS_PER_NODE = 20, 100


def nghttp2_tool(name: str) -> str:
    """``nghttp``/``h2load``, installing Debian's nghttp2-client when missing (as root, like
    the ops tests fetch helm); skip with the reason when it cannot be had."""
    path = shutil.which(name)
    if path is None and shutil.which("apt-get"):
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "nghttp2-client"],
                capture_output=True,
                timeout=300,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"nghttp2-client not installable here: {exc}")
        path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (Debian nghttp2-client) not available and no apt-get")
    return path


@pytest.fixture
async def big(nursery: trio.Nursery) -> AsyncIterator[Env]:
    async for env in start_env(nursery, None, nodes=NODES, pods_per_node=PODS_PER_NODE):
        await env.ready(60)
        yield env


async def test_grpcio_twenty_watches_on_one_channel(big: Env) -> None:
    target = f"127.0.0.1:{big.collector.grpc_port}"
    channel = grpc.insecure_channel(target)
    watches = [GrpcWatch(target, f"node-{i}").start(channel) for i in range(NODES)]
    big.watches.extend(watches)
    objects = await big.cluster.objects()  # listed once: the cluster does not change here
    kinds = selected_kinds(FALCO_KINDS)
    for w in watches:
        want = oracle.view(objects, w.node, kinds)
        await w.wait_for(lambda w, want=want: w.current == want, 60)  # type: ignore[misc]
    for w in watches:
        assert w.error is None, (w.node, w.error)  # nobody ended, UNAVAILABLE or otherwise
        assert len(w.events) == len(w.current)  # the initial sync, each object once
    channel.close()


async def test_nghttp_twenty_streams_on_one_connection(big: Env, tmp_path: Path) -> None:
    nghttp = nghttp2_tool("nghttp")
    node = "node-3"
    control = big.watch(node)
    await converged(big, control, timeout=60)
    view_bytes = sum(len(encode_message(e.SerializeToString())) for e in control.events)
    body = tmp_path / "selector"
    selector = pb.Selector(nodeName=node, resourceKinds={k: "true" for k in FALCO_KINDS})
    body.write_bytes(encode_message(selector.SerializeToString()))
    url = f"http://127.0.0.1:{big.collector.grpc_port}/metadata.Metadata/Watch"
    # 20 concurrent streams on one connection, 64 KiB windows (nghttp's default): the view of
    # each far exceeds the connection window, so they compete for it all along.
    result = await trio.run_process(
        [
            nghttp,
            "-v",
            "-n",
            "-m",
            "20",
            "-t",
            "4",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            url,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = result.stdout.decode(errors="replace")
    received: dict[int, int] = defaultdict(int)
    for length, sid in re.findall(
        r"recv DATA frame <length=(\d+), flags=0x0\d, stream_id=(\d+)>", out
    ):
        received[int(sid)] += int(length)
    statuses = re.findall(r"grpc-status: (\d+)", out)
    assert len(received) == 20, (sorted(received), out[-2000:])
    assert set(received.values()) == {view_bytes}, (view_bytes, received)
    assert statuses == [], statuses  # ended only by nghttp's own timeout, never by the server
    assert view_bytes > 65535  # each view alone exceeds the connection window
