"""A Watch subscriber that behaves like Falco's k8smeta plugin across reconnects, on grpcio.

What it copies from the plugin (falcosecurity/plugins, k8smeta 0.4.x): the table is never
cleared, not even on reconnect; Create and Update replace the entry by uid, Delete erases it and
a Delete of an unknown uid is ignored; any stream end or connect failure is followed by a
reconnect after a backoff that doubles up to a cap and is never reset (the plugin: 2 s -> 120 s;
here shorter, so tests stay quick). Each attempt uses a new channel, so grpcio's own connection
backoff does not add to ours. Runs in a thread; the test polls it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import trio

from metacollector.proto import metadata_pb2 as pb
from tests.support.grpc_watch import FALCO_KINDS


@dataclass
class K8smetaClient:
    target: str
    node: str
    kinds: tuple[str, ...] = FALCO_KINDS
    backoff: float = 0.2  # first reconnect delay (s)
    max_backoff: float = 1.6
    table: dict[str, pb.Event] = field(default_factory=dict)
    streams: int = 0  # Watch calls started
    failures: list[grpc.StatusCode] = field(default_factory=list)  # each stream end or refusal
    deletes: list[str] = field(default_factory=list)  # uids of every Delete received, in order
    deletes_of_unknown: int = 0
    events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _call: Any = None  # the current grpcio call (cancellable)

    def start(self) -> K8smetaClient:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        delay = self.backoff
        selector = pb.Selector(nodeName=self.node, resourceKinds={k: "" for k in self.kinds})
        while not self._stop.is_set():
            # its own connection, as each node's plugin has (grpcio shares them by default)
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(self.target, options=options) as channel:
                watch = channel.unary_stream(
                    "/metadata.Metadata/Watch",
                    request_serializer=pb.Selector.SerializeToString,
                    response_deserializer=pb.Event.FromString,
                )
                call = self._call = watch(selector)
                with self._lock:
                    self.streams += 1
                try:
                    for event in call:
                        self._apply(event)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append(exc.code())
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff)  # never reset, as the plugin

    def _apply(self, event: pb.Event) -> None:
        with self._lock:
            self.events += 1
            if event.reason == "Delete":
                self.deletes.append(event.uid)
                if self.table.pop(event.uid, None) is None:
                    self.deletes_of_unknown += 1
                return
            stored = pb.Event()
            stored.CopyFrom(event)
            stored.reason = "Create"  # the oracle renders every entry as a Create
            self.table[event.uid] = stored

    def snapshot(self) -> dict[str, bytes]:
        """The table, each entry as deterministic protobuf bytes."""
        with self._lock:
            return {uid: ev.SerializeToString(deterministic=True) for uid, ev in self.table.items()}

    def count(self, what: Callable[[K8smetaClient], int]) -> int:
        with self._lock:
            return what(self)

    async def wait_for(self, predicate: Callable[[K8smetaClient], bool], timeout: float) -> None:
        with trio.fail_after(timeout):
            while not self.count(lambda c: int(predicate(c))):
                await trio.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
