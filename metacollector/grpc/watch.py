"""The `/metadata.Metadata/Watch` handler: Selector -> subscription -> stream of Events.

Sends the initial sync, then whatever the subscriber's level-triggered mailbox yields, in
batches of up to ``BATCH_BYTES`` so several messages share one DATA frame and write. It never
returns normally: streams end by cancellation (shutdown: the server answers UNAVAILABLE), by the
peer, or with an error status.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
from google.protobuf.message import DecodeError

from metacollector import metrics
from metacollector.binding import NodeBinding, refusal
from metacollector.grpc.server import ServerStream, StreamClosed
from metacollector.grpc.status import GrpcError, Status
from metacollector.hub import Hub
from metacollector.log import GRPC_SERVER_LOGGER
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import Outgoing, selected_kinds

log = logging.getLogger(GRPC_SERVER_LOGGER)

BATCH_BYTES = 16 * 1024  # bounds what each of thousands of syncing subscribers holds at once
_subscriber_ids = itertools.count(1)


@dataclass
class WatchService:
    hub: Hub
    node_binding: NodeBinding = NodeBinding.OFF
    max_subscribers_per_node: int = 256

    async def watch(self, request: bytes, stream: ServerStream) -> None:
        try:
            selector = pb.Selector.FromString(request)
        except DecodeError as exc:
            raise GrpcError(Status.INVALID_ARGUMENT, f"undecodable Selector: {exc}") from None
        node = selector.nodeName
        if not node:
            raise GrpcError(Status.INVALID_ARGUMENT, "Selector.nodeName must not be empty")
        peer = stream.peer[0] if stream.peer else None
        denied = refusal(self.node_binding, self.hub.state, node, stream.peer, stream.peer_cert)
        if denied is not None:
            metrics.LIMIT_HITS.labels("node_binding").inc()
            log.warning(
                "watch refused: node binding", extra={"node": node, "peer": peer, "why": denied}
            )
            raise GrpcError(Status.PERMISSION_DENIED, denied)
        subscribers = self.hub.subscriber_count(node)
        if subscribers >= self.max_subscribers_per_node:
            metrics.LIMIT_HITS.labels("subscribers_per_node").inc()
            log.warning("watch refused: too many subscribers", extra={"node": node})
            raise GrpcError(
                Status.RESOURCE_EXHAUSTED,
                f"node {node!r} already has {subscribers} subscribers",
            )
        kinds = selected_kinds(selector.resourceKinds)
        # upstream's fields first (its e2e patterns match `"msg":...,"node":"<node>"`)
        uid = str(next(_subscriber_ids))
        log.info(
            "received watch request",
            extra={"node": node, "subscriber UID": uid, "kinds": sorted(kinds), "peer": peer},
        )
        mailbox = self.hub.subscribe(node, kinds)
        metrics.SUBSCRIBERS.inc()
        log.info("starting initial event sync", extra={"node": node, "subscriber UID": uid})
        wakeup = trio.Event()

        def ready() -> None:
            wakeup.set()

        mailbox.wake_with(ready)
        try:
            while True:
                if not mailbox.has_pending():
                    wakeup = trio.Event()
                    await wakeup.wait()
                await _send(stream, self.hub.take(mailbox, BATCH_BYTES))
        except (trio.Cancelled, StreamClosed):
            # peer gone (a reset or a closed connection is the normal end of a Watch) or
            # shutting down: upstream's "stream context done" line, not an error
            log.info(
                "context canceled, closing connection",
                extra={"subscriber": node, "subscriber UID": uid},
            )
            raise
        except BaseException as exc:
            log.error(
                "closing connection",
                extra={"subscriber": node, "subscriber UID": uid, "error": repr(exc)[:300]},
            )
            raise
        finally:
            mailbox.wake_with(None)
            self.hub.unsubscribe(mailbox)
            metrics.SUBSCRIBERS.dec()
            log.info("stream deleted", extra={"subscriber": node, "subscriber UID": uid})


async def _send(stream: ServerStream, batch: list[Outgoing]) -> None:
    """Send a batch taken from the mailbox and count it. A function of its own so the batch
    (up to ``BATCH_BYTES`` of messages) is freed once sent, not held by a subscriber waiting
    for its next change (bench/README.md, Memory)."""
    if not batch:
        return
    await stream.send_messages([sent.message for sent in batch])
    _count_sent(batch, trio.current_time())


_dispatch_children: dict[tuple[str, str], Any] = {}
_QUEUE_DURATION = metrics.QUEUE_DURATION.labels(metrics.QUEUE_NAME)


def _count_sent(batch: Sequence[Outgoing], now: float) -> None:
    """Upstream's dispatched-events counters and queue duration for a batch written at
    ``now``: one increment per (kind, reason) and one histogram update per batch, not per
    event (a full-size initial sync writes 634,768 events)."""
    counts: dict[tuple[str, str], int] = {}
    for sent in batch:
        pair = (sent.kind, sent.reason)
        counts[pair] = counts.get(pair, 0) + 1
    for (kind, reason), count in counts.items():
        _dispatched(kind, reason).inc(count)
    metrics.observe_all(_QUEUE_DURATION, [now - sent.marked_at for sent in batch])


def _dispatched(kind: str, reason: str) -> Any:
    """The DISPATCHED_EVENTS child for (kind, reason), looked up once."""
    child = _dispatch_children.get((kind, reason))
    if child is None:
        child = _dispatch_children[(kind, reason)] = metrics.DISPATCHED_EVENTS.labels(kind, reason)
    return child
