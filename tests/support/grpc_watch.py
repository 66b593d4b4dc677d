"""A Watch subscriber on grpcio (the independent peer), driven from trio tests.

grpcio's blocking iterator runs in a thread; events land in a list the test polls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import trio

from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS
from tests.support.harness import Subscriber


@dataclass
class GrpcWatch:
    target: str
    node: str
    kinds: tuple[str, ...] = FALCO_KINDS
    credentials: grpc.ChannelCredentials | None = None
    options: list[tuple[str, Any]] = field(default_factory=list)
    events: list[pb.Event] = field(default_factory=list)
    table: dict[str, pb.Event] = field(default_factory=dict)
    method: str = "/metadata.Metadata/Watch"
    error: grpc.RpcError | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self, channel: grpc.Channel | None = None) -> GrpcWatch:
        """Open the stream, on ``channel`` when given (several streams on one connection)."""
        if channel is not None:
            self.channel = channel
        elif self.credentials is None:
            self.channel = grpc.insecure_channel(self.target, options=self.options)
        else:
            self.channel = grpc.secure_channel(self.target, self.credentials, options=self.options)
        watch = self.channel.unary_stream(
            self.method,
            request_serializer=pb.Selector.SerializeToString,
            response_deserializer=pb.Event.FromString,
        )
        selector = pb.Selector(nodeName=self.node, resourceKinds={k: "" for k in self.kinds})
        self.call = watch(selector)
        # the collector keeps a departure log: Deletes of unknown uids are counted, not faults
        self._checker = Subscriber(mailbox=None, departures=True)  # type: ignore[arg-type]
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        try:
            for event in self.call:
                self._checker.apply(event)  # asserts the stream's rules as events arrive
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc
        except AssertionError as exc:  # a broken stream rule: surface it to the test
            self.error = exc  # type: ignore[assignment]
        finally:
            self.table = self._checker.table
            self.done.set()

    @property
    def current(self) -> dict[str, pb.Event]:
        return self._checker.table

    async def wait_for(self, predicate: Callable[[GrpcWatch], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                if isinstance(self.error, AssertionError):
                    raise self.error
                await trio.sleep(0.01)

    async def wait_ended(self, timeout: float = 10) -> grpc.StatusCode:
        with trio.fail_after(timeout):
            while not self.done.is_set():
                await trio.sleep(0.01)
        assert isinstance(self.error, grpc.RpcError), self.error
        return self.error.code()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()
