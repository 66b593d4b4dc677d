"""The hub: the one task that owns ClusterState, applies reflector deltas through the reducer
and turns what the reducer reports into outputs: touched keys into subscriber mailboxes,
changed objects into the optional CloudEvents sink's ``ObjectChange``s (through its
non-blocking ``offer``).

Everything runs on one trio thread, so mailboxes read the state between awaits without locks.
A batch is applied in slices of at most ``SLICE_SECONDS`` of CPU with a checkpoint between
them, so probes, subscribers and shutdown stay live whatever the API server sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

import trio

from metacollector import metrics
from metacollector.changes import ObjectChange, Reason, object_change
from metacollector.events import Delta, Edit, Outcome
from metacollector.model import KINDS, Pod
from metacollector.reducer import Reducer
from metacollector.subscriptions import Mailbox, Subscriptions

log = logging.getLogger(__name__)

# Longest the hub applies deltas before it lets the other tasks run. (One delta is never split:
# its cost is bounded by what it changes, e.g. a Service selecting 10,000 pods takes ~20 ms.)
SLICE_SECONDS: Final = 0.002


class Hub:
    def __init__(self, offer: Callable[[ObjectChange], None] | None = None) -> None:
        self.reducer = Reducer()
        self.state = self.reducer.state
        self.subscriptions = Subscriptions(self.state)
        self._offer = offer
        self.applied = 0
        self.slices = 0  # how many slices ``run`` applied its batches in
        metrics.MAILBOX_DEPTH.set_function(self.subscriptions.depth)
        for kind in KINDS:
            held = self.state.pods if kind == "Pod" else self.state.objects[kind]
            metrics.OBJECTS.labels(kind).set_function(held.__len__)

    def apply(self, deltas: Sequence[Delta]) -> None:
        """Apply a whole batch of reflector deltas at once (``run`` applies it in slices)."""
        self._apply(deltas, 0, None)

    async def run(self, deltas: trio.MemoryReceiveChannel[Sequence[Delta]]) -> None:
        """Consume reflector batches until every sender closed its end."""
        async with deltas:
            async for batch in deltas:
                start = self._apply(batch, 0, time.perf_counter() + SLICE_SECONDS)
                while start < len(batch):
                    await trio.lowlevel.checkpoint()
                    start = self._apply(batch, start, time.perf_counter() + SLICE_SECONDS)

    def _apply(self, deltas: Sequence[Delta], start: int, deadline: float | None) -> int:
        """Apply ``deltas[start:]`` until ``deadline`` (perf_counter) passes; route what they
        touched, offer what changed; return where it stopped."""
        self.slices += 1
        now = trio.current_time()
        apply = self.reducer.apply
        out = Outcome([], [] if self._offer is not None else None)
        end = start
        for delta in deltas[start:] if start else deltas:
            end += 1
            apply(delta.type, delta.kind, delta.obj, out)
            if deadline is not None and time.perf_counter() >= deadline:
                break
        self.applied += end - start
        self.subscriptions.route(out.touched, now)
        if out.changed:
            changes: dict[tuple[str, str], _Pending] = {}
            for edit in out.changed:
                _coalesce(changes, edit)
            self._offer_changes(changes, now)
        return end

    def _offer_changes(self, changes: dict[tuple[str, str], _Pending], now: float) -> None:
        """One ObjectChange per object changed in the slice, its refs rendered once."""
        assert self._offer is not None
        pods = self.state.pods
        for (kind, uid), (reason, edit) in changes.items():
            obj = edit.new if edit.new is not None else edit.old
            assert obj is not None
            refs = None
            if isinstance(obj, Pod) and edit.new is not None:
                refs = {k: list(v) for k, v in pods[uid].refs()}
            self._offer(object_change(reason, kind, obj, refs, now))

    def subscribe(self, node: str, kinds: frozenset[str]) -> Mailbox:
        return self.subscriptions.subscribe(node, kinds, trio.current_time())

    def unsubscribe(self, mailbox: Mailbox) -> None:
        self.subscriptions.unsubscribe(mailbox)


_Pending = tuple[Reason, Edit]  # the reason so far and the latest edit of one object


def _coalesce(changes: dict[tuple[str, str], _Pending], edit: Edit) -> None:
    """Fold one edit into the slice's changes as the sink's ``coalesce`` folds offers (the
    latest state wins, a Create stays a Create, a Delete wins), so that offering one change
    per object per slice hands the sink exactly what offering every edit would."""
    reason: Reason = "Create" if edit.old is None else "Delete" if edit.new is None else "Update"
    obj = edit.new if edit.new is not None else edit.old
    assert obj is not None
    key = (edit.kind, obj.metadata.uid)
    pending = changes.get(key)
    if pending is not None and reason == "Update" and pending[0] == "Create":
        reason = "Create"
    changes[key] = (reason, edit)
