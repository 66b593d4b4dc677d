"""Reflectors against the emulator under each fault: afterwards the state handed downstream
equals a fresh list exactly, and relists happened only where unavoidable (410)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metacollector.emulator.inprocess import EmulatorHandle, running_emulator
from metacollector.kube.client import make_client
from metacollector.kube.config import load_kubeconfig
from metacollector.kube.reflector import Backoff, Delta, Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.model import KIND_TYPES
from tests.support.env import needs_emulator
from tests.support.kube import NAMESPACES, counting_plugin, exec_kubeconfig

pytestmark = needs_emulator
PODS = next(r for r in RESOURCES if r.kind == "Pod")


@dataclass
class Mirror:
    """What downstream (the hub) was handed: uid -> resourceVersion, built from deltas only."""

    reflector: Reflector[Any]
    objects: dict[str, str]
    deltas: int = 0

    async def consume(self, receive: trio.MemoryReceiveChannel[Sequence[Delta]]) -> None:
        async for batch in receive:
            for d in batch:
                self.deltas += 1
                if d.type == "DELETED":
                    assert d.obj.metadata.uid in self.objects, "DELETED for an unknown object"
                    del self.objects[d.obj.metadata.uid]
                else:
                    self.objects[d.obj.metadata.uid] = d.obj.metadata.resourceVersion


async def start(
    nursery: trio.Nursery,
    emu: EmulatorHandle,
    resource: Any = PODS,
    kubeconfig: Path | None = None,
    backoff: float = 0.05,
) -> Mirror:
    cfg = load_kubeconfig(str(kubeconfig or emu.kubeconfig))
    client = make_client(cfg)
    send, receive = trio.open_memory_channel[Sequence[Delta]](100)
    reflector: Reflector[Any] = Reflector(
        client,
        resource,
        KIND_TYPES[resource.kind],
        send,
        backoff=Backoff(initial=backoff, maximum=4 * backoff, jitter=0),
        watch_timeout=(5, 10),
    )
    mirror = Mirror(reflector, {})
    nursery.start_soon(mirror.consume, receive)
    nursery.start_soon(reflector.run)
    with trio.fail_after(10):
        await reflector.synced.wait()
    return mirror


async def fresh(emu: EmulatorHandle, path: str = "/api/v1/pods") -> dict[str, str]:
    async with emu.client() as client:
        items = (await client.get(path)).json()["items"]
    return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}


async def converged(emu: EmulatorHandle, mirror: Mirror, path: str = "/api/v1/pods") -> None:
    with trio.fail_after(10):
        while True:
            expected = await fresh(emu, path)
            if mirror.objects == expected and mirror.reflector.store.keys() == expected.keys():
                return
            await trio.sleep(0.05)


async def churn(emu: EmulatorHandle, n: int, tag: str) -> None:
    async with emu.client() as client:
        pods = (await client.get("/api/v1/pods")).json()["items"]
        for i in range(n):
            m = pods[i % len(pods)]["metadata"]
            r = await client.patch(
                f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}",
                json={"metadata": {"labels": {"churn": f"{tag}-{i}"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert r.status_code == 200, r.text


async def test_initial_list_paginates_and_syncs(emu: EmulatorHandle, nursery: trio.Nursery) -> None:
    mirror = await start(nursery, emu)
    mirror.reflector.page_size = 2
    await converged(emu, mirror)
    assert mirror.reflector.relists == 0


@pytest.mark.parametrize(
    ("faults", "changes", "restarts"),
    [({"drop_watch_after": 3}, 20, 3), ({"malformed_lines": 2}, 6, 1)],
    ids=["dropped-connection", "malformed-line"],
)
async def test_watch_fault_resumes_without_relist(
    emu: EmulatorHandle,
    nursery: trio.Nursery,
    faults: dict[str, int],
    changes: int,
    restarts: int,
) -> None:
    mirror = await start(nursery, emu)
    await emu.set_faults(**faults)
    await churn(emu, changes, next(iter(faults)).replace("_", "-"))
    await converged(emu, mirror)
    assert mirror.reflector.relists == 0
    assert mirror.reflector.watch_restarts >= restarts


async def test_in_band_410_relists_once(emu: EmulatorHandle, nursery: trio.Nursery) -> None:
    mirror = await start(nursery, emu)
    with trio.fail_after(10):  # the watch is open
        while not emu.emulator.store.watchers["pods"]:
            await trio.sleep(0.01)
    await emu.admin("/admin/compact")
    await churn(emu, 5, "after-compaction")
    await converged(emu, mirror)
    assert mirror.reflector.relists == 1


async def test_http_410_on_resume_relists_with_difference_only(
    emu: EmulatorHandle, nursery: trio.Nursery
) -> None:
    mirror = await start(nursery, emu, backoff=1.0)  # resume is held off a second
    await emu.set_faults(drop_watch_after=1)
    await churn(emu, 1, "x")  # delivered, then the connection drops
    await emu.set_faults(drop_watch_after=0)
    await churn(emu, 4, "y")  # missed while disconnected...
    async with emu.client() as client:  # ...and a pod vanishes
        victim = (await client.get("/api/v1/pods")).json()["items"][-1]["metadata"]
        await client.delete(f"/api/v1/namespaces/{victim['namespace']}/pods/{victim['name']}")
    await emu.admin("/admin/compact")  # ...and history is gone: resuming gets HTTP 410
    before = mirror.deltas
    await converged(emu, mirror)
    assert mirror.reflector.relists == 1
    assert victim["uid"] not in mirror.objects
    # only what changed since the store was last right was handed on, not the whole list
    assert mirror.deltas - before <= 10


async def test_429_storm_and_500s_back_off_and_recover(
    emu: EmulatorHandle, nursery: trio.Nursery
) -> None:
    mirror = await start(nursery, emu)
    await emu.set_faults(drop_watch_after=1, throttle_requests=5, retry_after=0)
    await churn(emu, 3, "throttled")
    await emu.set_faults(drop_watch_after=0, error_requests=4)
    await churn(emu, 3, "errors")
    await converged(emu, mirror)
    assert mirror.reflector.relists == 0


async def test_new_resource_version_epoch(emu: EmulatorHandle, nursery: trio.Nursery) -> None:
    mirror = await start(nursery, emu)
    await emu.admin("/admin/restart")
    await churn(emu, 3, "new-epoch")
    await converged(emu, mirror)
    assert mirror.reflector.relists == 1


async def test_token_rotation_rereads_token_file(
    emu: EmulatorHandle, nursery: trio.Nursery, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(emu.token)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        emu.kubeconfig.read_text().replace(f"token: {emu.token}", f"tokenFile: {token_file}")
    )
    mirror = await start(nursery, emu, kubeconfig=kubeconfig)
    token_file.write_text("rotated-token")
    await emu.admin("/admin/tokens", {"tokens": ["rotated-token"]})
    emu.token = "rotated-token"
    await emu.set_faults(drop_watch_after=1)
    await churn(emu, 3, "rotated")
    await emu.set_faults(drop_watch_after=0)
    await converged(emu, mirror)
    assert mirror.reflector.relists == 0


async def test_metadata_only_kinds(emu: EmulatorHandle, nursery: trio.Nursery) -> None:
    mirror = await start(nursery, emu, NAMESPACES)
    await converged(emu, mirror, "/api/v1/namespaces")
    async with emu.client() as client:
        await client.post("/api/v1/namespaces", json={"metadata": {"name": "late"}})
    await converged(emu, mirror, "/api/v1/namespaces")
    requests = (await emu.stats())["requests"]
    assert requests.get("watch namespaces", 0) >= 1


async def test_streaming_list_and_fallback(nursery: trio.Nursery) -> None:
    for streaming in (True, False):
        async with (
            running_emulator(nodes=2, pods_per_node=3, streaming_lists=streaming) as emu,
            trio.open_nursery() as inner,
        ):
            cfg = load_kubeconfig(str(emu.kubeconfig))
            send, receive = trio.open_memory_channel[Sequence[Delta]](100)
            reflector: Reflector[Any] = Reflector(
                make_client(cfg),
                PODS,
                KIND_TYPES["Pod"],
                send,
                streaming_list=True,
                backoff=Backoff(initial=0.05),
            )
            mirror = Mirror(reflector, {})
            inner.start_soon(mirror.consume, receive)
            inner.start_soon(reflector.run)
            await converged(emu, mirror)
            await churn(emu, 2, "s")
            await converged(emu, mirror)
            assert reflector.streaming_list is streaming  # fell back when refused
            inner.cancel_scope.cancel()


async def test_streaming_list_then_drop_resumes_without_listing_again(
    emu: EmulatorHandle, nursery: trio.Nursery
) -> None:
    """After the initial-events-end bookmark the streaming list has listed: a dropped
    connection resumes the watch from the last rv instead of streaming the whole list again."""
    cfg = load_kubeconfig(str(emu.kubeconfig))
    client = make_client(cfg)
    initial_requests: list[str] = []

    async def record(request: httpx.Request) -> None:
        if request.url.params.get("sendInitialEvents") == "true":
            initial_requests.append(str(request.url))

    client.event_hooks = {"request": [record]}
    send, receive = trio.open_memory_channel[Sequence[Delta]](100)
    reflector: Reflector[Any] = Reflector(
        client, PODS, KIND_TYPES["Pod"], send, streaming_list=True, backoff=Backoff(initial=0.05)
    )
    mirror = Mirror(reflector, {})
    nursery.start_soon(mirror.consume, receive)
    nursery.start_soon(reflector.run)
    await converged(emu, mirror)
    await emu.set_faults(drop_watch_after=2)
    await churn(emu, 8, "stream-drop")
    await emu.set_faults(drop_watch_after=0)
    await converged(emu, mirror)
    assert reflector.streaming_list and reflector.watch_restarts >= 1
    assert len(initial_requests) == 1, initial_requests
    assert reflector.relists == 0


async def test_failing_exec_plugin_is_retried(
    emu: EmulatorHandle, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A credential plugin that fails at first is retried with backoff; the reflector syncs."""
    token_file = tmp_path / "token"
    token_file.write_text(emu.token)
    script, runs = counting_plugin(tmp_path, token_file, fail_first=2)
    mirror = await start(nursery, emu, kubeconfig=exec_kubeconfig(emu, tmp_path, script))
    await converged(emu, mirror)
    assert len(runs.read_text().splitlines()) == 3
    assert mirror.reflector.watch_restarts >= 2 and mirror.reflector.relists == 0
