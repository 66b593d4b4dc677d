"""A GrpcServer with dummy handlers on a free port, for transport tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from metacollector.grpc.server import GrpcServer, Handler, ServerLimits, ServerStream
from metacollector.grpc.status import GrpcError, Status
from metacollector.proto import metadata_pb2 as pb


def event(i: int, size: int = 0) -> bytes:
    return pb.Event(reason="Create", uid=f"u{i}", kind="Pod", meta="x" * size).SerializeToString()


async def stream_n(request: bytes, stream: ServerStream) -> None:
    """Send as many events as the selector's nodeName says, then wait forever."""
    selector = pb.Selector.FromString(request)
    n, _, size = selector.nodeName.partition(":")
    batch = [event(i, int(size or 0)) for i in range(int(n))]
    for start in range(0, len(batch), 50):
        await stream.send_messages(batch[start : start + 50])
    await trio.sleep_forever()


async def fail(request: bytes, stream: ServerStream) -> None:
    raise GrpcError(Status.INVALID_ARGUMENT, "bad selector: ünïcode % 100")


async def crash(request: bytes, stream: ServerStream) -> None:
    raise RuntimeError("boom")


HANDLERS: dict[str, Handler] = {
    "/metadata.Metadata/Watch": stream_n,
    "/test.Test/Fail": fail,
    "/test.Test/Crash": crash,
}


@dataclass
class Served:
    server: GrpcServer
    port: int
    cancel: Callable[[], None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_server(nursery: trio.Nursery, **kwargs: object) -> Served:
    limits = kwargs.pop("limits", ServerLimits(stall_timeout=1.0, preface_timeout=1.0))
    server = GrpcServer(HANDLERS, limits=limits, **kwargs)  # type: ignore[arg-type]
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)

    port = await nursery.start(run)
    return Served(server, port, scope.cancel)
