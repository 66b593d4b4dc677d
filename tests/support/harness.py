"""A reducer + subscriptions pair driven like the app drives it, and the table a Falco
subscriber builds from its events (Create/Update replace by uid, Delete removes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from metacollector.events import WatchType
from metacollector.model import Object
from metacollector.proto import metadata_pb2 as pb
from metacollector.reducer import Reducer
from metacollector.subscriptions import FALCO_KINDS, Mailbox, Subscriptions, selected_kinds


@dataclass
class Subscriber:
    mailbox: Mailbox
    table: dict[str, pb.Event] = field(default_factory=dict)
    log: list[pb.Event] = field(default_factory=list)
    # With a departure log (SPEC section 2, lifecycle) a subscribe also brings Deletes of
    # objects this subscriber never saw: they are counted here instead of failing the check.
    departures: bool = False
    unknown_deletes: list[str] = field(default_factory=list)

    def apply(self, event: pb.Event) -> None:
        """Apply one event, asserting the stream's own rules on the way."""
        assert event.reason in ("Create", "Update", "Delete"), event
        self.log.append(event)
        if event.reason == "Delete":
            assert not event.HasField("meta") and not event.HasField("refs")
            assert not event.HasField("status")
            if event.uid not in self.table:
                assert self.departures, f"Delete of unknown {event.kind} {event.uid}"
                self.unknown_deletes.append(event.uid)
                return
            del self.table[event.uid]
            return
        assert event.HasField("meta") and not event.HasField("spec")
        if event.reason == "Create":
            assert event.uid not in self.table, f"Create of known {event.kind} {event.uid}"
        else:
            previous = self.table.get(event.uid)
            assert previous is not None, f"Update of unknown {event.kind} {event.uid}"
            stripped = pb.Event()
            stripped.CopyFrom(event)
            stripped.reason = "Create"
            assert stripped != previous, "Update without change"
        stored = pb.Event()
        stored.CopyFrom(event)
        stored.reason = "Create"
        self.table[event.uid] = stored


@dataclass
class Core:
    reducer: Reducer = field(default_factory=Reducer)
    subs: Subscriptions | None = None
    now: float = 0.0

    def __post_init__(self) -> None:
        self.subs = Subscriptions(self.reducer.state)

    def apply(self, change_type: WatchType, kind: str, obj: Object) -> None:
        assert self.subs is not None
        self.subs.route(self.reducer.apply(change_type, kind, obj).touched, self.now)

    def subscribe(self, node: str, kinds: list[str] | None = None) -> Subscriber:
        assert self.subs is not None
        wanted = selected_kinds(kinds or [*FALCO_KINDS, "DaemonSet"])
        return Subscriber(self.subs.subscribe(node, wanted, self.now))

    def drain(self, sub: Subscriber, max_bytes: int = 1 << 30) -> list[pb.Event]:
        events = []
        for sent in sub.mailbox.take(self.reducer.state, max_bytes):
            event = pb.Event.FromString(sent.message)
            assert event.reason == sent.reason and event.kind == sent.kind
            sub.apply(event)
            events.append(event)
        return events
