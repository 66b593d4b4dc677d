"""The hub: the one task that owns ClusterState, applies reflector deltas through the reducer
and routes the touched keys into subscriber mailboxes.

Everything runs on one trio thread, so mailboxes read the state between awaits without locks.
Cluster-wide changes go to the optional CloudEvents sink through its non-blocking ``offer``.
Each view departure the reducer reports goes into the departure log, which every subscribe
reads (SPEC section 2, lifecycle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from metacollector import metrics
from metacollector.changes import ObjectChange
from metacollector.departures import DepartureLog
from metacollector.model import KINDS, Object
from metacollector.reducer import ChangeType, Reducer
from metacollector.subscriptions import Mailbox, Outgoing, Subscriptions

log = logging.getLogger(__name__)

# mailbox marks by the API change that caused them (upstream's queue-adds metric)
_CHANGE_TYPES: tuple[ChangeType, ...] = ("ADDED", "MODIFIED", "DELETED")
_ADDS = {
    change: metrics.QUEUE_ADDS.labels(metrics.QUEUE_NAME, event_type)
    for change, event_type in zip(_CHANGE_TYPES, metrics.EVENT_TYPES, strict=True)
}


class Hub:
    def __init__(
        self,
        offer: Callable[[ObjectChange], None] | None = None,
        progress: Callable[[Sequence[Any]], None] | None = None,
        departures: DepartureLog | None = None,
    ) -> None:
        self.reducer = Reducer(track_changes=offer is not None, track_departures=True)
        self.state = self.reducer.state
        self.departures = departures if departures is not None else DepartureLog()
        self.subscriptions = Subscriptions(self.state, self.departures)
        metrics.DEPARTURES_HELD.set_function(self.departures.__len__)
        self._offer = offer
        self._progress = progress  # every applied batch, changes or not (CloudEvents watermark)
        self.applied = 0
        metrics.MAILBOX_DEPTH.set_function(self.subscriptions.depth)
        for kind in KINDS:
            held = self.state.pods if kind == "Pod" else self.state.objects[kind]
            metrics.OBJECTS.labels(kind).set_function(held.__len__)

    def apply(self, deltas: Sequence[Any]) -> None:
        """Apply a batch of reflector deltas (objects with .type, .kind and .obj)."""
        now = trio.current_time()
        reducer = self.reducer
        reducer.now = now
        route = self.subscriptions.route
        track = self._offer is not None
        marked: dict[ChangeType, int] = dict.fromkeys(_CHANGE_TYPES, 0)
        for delta in deltas:
            change_type: ChangeType = delta.type
            obj: Object = delta.obj
            if track:  # what caused the changes, for the CloudEvents watermark and replay rule
                reducer.cause_version = obj.metadata.resourceVersion
                reducer.initial = getattr(delta, "initial", False)
            marked[change_type] += route(reducer.apply(change_type, delta.kind, obj), now)
        for change_type, count in marked.items():
            if count:
                _ADDS[change_type].inc(count)
        self.applied += len(deltas)
        if reducer.departed:
            self._record_departures(now)
        if self._offer is not None and reducer.changes:
            for change in reducer.changes:
                self._offer(change)
            reducer.changes.clear()
        if self._progress is not None:
            self._progress(deltas)

    def _record_departures(self, now: float) -> None:
        evicted = self.departures.record(self.reducer.departed, now)
        self.reducer.departed.clear()
        if evicted.node_cap:
            metrics.DEPARTURES_EVICTED.labels("node").inc(evicted.node_cap)
        if evicted.total_cap:
            metrics.DEPARTURES_EVICTED.labels("total").inc(evicted.total_cap)

    async def run(self, deltas: trio.MemoryReceiveChannel[Sequence[Any]]) -> None:
        """Consume reflector batches until every sender closed its end."""
        async with deltas:
            async for batch in deltas:
                self.apply(batch)

    def subscribe(self, node: str, kinds: frozenset[str]) -> Mailbox:
        mailbox = self.subscriptions.subscribe(node, kinds, trio.current_time())
        departed = len(mailbox.sent)  # a new mailbox has "sent" only its departed keys
        if departed:
            metrics.DEPARTURE_DELETES.inc(departed)
        _ADDS["ADDED"].inc(len(mailbox.dirty))  # the initial sync: every key, as Create
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        self.subscriptions.unsubscribe(mailbox)

    def subscriber_count(self, node: str) -> int:
        return self.subscriptions.subscriber_count(node)

    def take(self, mailbox: Mailbox, max_bytes: int) -> list[Outgoing]:
        """The next messages for ``mailbox``'s subscriber, from the current state."""
        return mailbox.take(self.state, max_bytes)
