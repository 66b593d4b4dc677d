"""The hub: the one task that owns ClusterState, applies reflector deltas through the reducer
and routes the touched keys into subscriber mailboxes.

Everything runs on one trio thread, so mailboxes read the state between awaits without locks.
Cluster-wide changes go to the optional CloudEvents sink through its non-blocking ``offer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from metacollector import metrics
from metacollector.changes import ObjectChange
from metacollector.model import KINDS, Object
from metacollector.reducer import ChangeType, Reducer
from metacollector.subscriptions import Mailbox, Subscriptions

log = logging.getLogger(__name__)

# mailbox marks by the API change that caused them (upstream's queue-adds metric)
_CHANGE_TYPES: tuple[ChangeType, ...] = ("ADDED", "MODIFIED", "DELETED")
_ADDS = {
    change: metrics.QUEUE_ADDS.labels(metrics.QUEUE_NAME, event_type)
    for change, event_type in zip(_CHANGE_TYPES, metrics.EVENT_TYPES, strict=True)
}


class Hub:
    def __init__(self, offer: Callable[[ObjectChange], None] | None = None) -> None:
        self.reducer = Reducer(track_changes=offer is not None)
        self.state = self.reducer.state
        self.subscriptions = Subscriptions(self.state)
        self._offer = offer
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
        marked: dict[ChangeType, int] = dict.fromkeys(_CHANGE_TYPES, 0)
        for delta in deltas:
            change_type: ChangeType = delta.type
            obj: Object = delta.obj
            marked[change_type] += route(reducer.apply(change_type, delta.kind, obj), now)
        for change_type, count in marked.items():
            if count:
                _ADDS[change_type].inc(count)
        self.applied += len(deltas)
        if self._offer is not None and reducer.changes:
            for change in reducer.changes:
                self._offer(change)
            reducer.changes.clear()

    async def run(self, deltas: trio.MemoryReceiveChannel[Sequence[Any]]) -> None:
        """Consume reflector batches until every sender closed its end."""
        async with deltas:
            async for batch in deltas:
                self.apply(batch)

    def subscribe(self, node: str, kinds: frozenset[str]) -> Mailbox:
        mailbox = self.subscriptions.subscribe(node, kinds, trio.current_time())
        _ADDS["ADDED"].inc(len(mailbox.dirty))  # the initial sync: every key, as Create
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        self.subscriptions.unsubscribe(mailbox)
