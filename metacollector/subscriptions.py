"""Subscribers by node and their level-triggered mailboxes (docs/architecture.md, invariant 1).

A mailbox holds the *set* of keys touched since they were last looked at, never a queue of
events. When its sender has room, ``take`` compares each key's current state with what this
subscriber last received and yields Create, Update or Delete, or nothing. A slow subscriber's
mailbox is therefore bounded by its node's view, and it always ends on the true final state.

On subscribe, after the initial sync's keys, the mailbox also queues a Delete for every key in
its node's departure log that is not in the view now (SPEC section 2, lifecycle): Falco's plugin
keeps its table across reconnects, and this is what erases what left the view while it was away.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from metacollector.departures import DepartureLog
from metacollector.events import Key
from metacollector.model import KINDS, SharedValues
from metacollector.render import CREATE_PREFIX, UPDATE_PREFIX, delete_message
from metacollector.state import ClusterState

# The kinds Falco's k8smeta plugin asks for, in its spelling: "ReplicaController" (sic), which
# we serve ReplicationControllers; it never asks for DaemonSets.
FALCO_KINDS: Final = (
    "Pod",
    "Namespace",
    "Deployment",
    "Service",
    "ReplicaSet",
    "ReplicaController",
)
KIND_ALIASES: Final = {"ReplicaController": "ReplicationController"}

# ``Mailbox.sent`` value of a departed key queued on subscribe: as if sent, so ``take`` yields a
# Delete while the key stays out of the view, and a Create (not an Update) if it came back.
DEPARTED: Final = b"\0departed"


def selected_kinds(requested: Iterable[str]) -> frozenset[str]:
    """Kinds a subscriber receives: the known keys of its selector (aliases resolved); one
    shared set per combination, not one per subscriber (a set of six kinds is 728 bytes)."""
    return _kind_sets.get(frozenset(KIND_ALIASES.get(k, k) for k in requested) & frozenset(KINDS))


_kind_sets: SharedValues[frozenset[str]] = SharedValues()  # at most 2 ** len(KINDS) entries


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """A message taken from a mailbox, to be sent: protobuf bytes plus what metrics and latency
    need.

    A msgspec Struct: built in C, far cheaper than a NamedTuple (bench/README.md, Reducer).
    """

    message: bytes
    kind: str
    reason: str
    marked_at: float


@dataclass(eq=False, slots=True)
class Mailbox:
    node: str
    kinds: frozenset[str]
    dirty: dict[Key, float] = field(default_factory=dict)  # key -> when first marked
    sent: dict[Key, bytes] = field(default_factory=dict)  # key -> body last sent
    # Wakes the sender (set by the I/O layer) when the mailbox gets its first pending key; a
    # sender waits only while ``dirty`` is empty.
    on_ready: Callable[[], None] | None = None

    def has_pending(self) -> bool:
        """Whether any key waits to be looked at (the sender need not wait)."""
        return bool(self.dirty)

    def wake_with(self, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` whenever the mailbox gets its first pending key (None: stop)."""
        self.on_ready = wake

    def take(self, state: ClusterState, max_bytes: int) -> list[Outgoing]:
        """The next events for this subscriber, up to about ``max_bytes`` (at least one).

        Keys are looked at oldest-marked first; each yields Create, Update, Delete or nothing.
        """
        out: list[Outgoing] = []
        size = 0
        dirty, sent, node = self.dirty, self.sent, self.node
        current = state.event_body
        looked = 0
        for key, marked_at in dirty.items():
            looked += 1
            last = sent.get(key)
            body = current(node, key)
            if body is not None:
                if last is None:
                    message, reason = CREATE_PREFIX + body, "Create"
                elif last is not body and last != body:
                    if last is DEPARTED:
                        message, reason = CREATE_PREFIX + body, "Create"
                    else:
                        message, reason = UPDATE_PREFIX + body, "Update"
                else:
                    continue
                sent[key] = body
            elif last is not None:
                del sent[key]
                message, reason = delete_message(*key), "Delete"
            else:
                continue
            out.append(Outgoing(message, key[0], reason, marked_at))
            size += len(message)
            if size >= max_bytes:
                break
        else:
            dirty.clear()
            return out
        for key in list(itertools.islice(dirty, looked)):
            del dirty[key]
        return out


@dataclass
class Subscriptions:
    """Every subscriber, by node; routes the reducer's touched keys into their mailboxes."""

    state: ClusterState
    departures: DepartureLog | None = None
    by_node: dict[str, set[Mailbox]] = field(default_factory=dict)

    def subscribe(self, node: str, kinds: frozenset[str], now: float) -> Mailbox:
        """Register a subscriber and queue its initial sync (every key of its view), then a
        Delete for each recently departed key not in the view; right after this call,
        ``len(mailbox.sent)`` is the number of those Deletes."""
        mailbox = Mailbox(node=node, kinds=kinds)
        self.by_node.setdefault(node, set()).add(mailbox)
        dirty = mailbox.dirty
        for key in self.state.view(node):
            if key[0] in kinds:
                dirty[key] = now
        if self.departures is not None:
            for key in self.departures.for_node(node, now):
                if key[0] in kinds and key not in dirty:  # dirty holds exactly the view now
                    mailbox.sent[key] = DEPARTED
                    dirty[key] = now
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        members = self.by_node.get(mailbox.node)
        if members is not None:
            members.discard(mailbox)
            if not members:
                del self.by_node[mailbox.node]

    def route(self, touched: Iterable[tuple[str, Key]], now: float) -> int:
        """Mark each touched key in the mailboxes of its node's subscribers that want its kind,
        remembering when it was first marked; wake a mailbox's sender on its first key.
        Returns how many keys were newly marked (the queue-adds metric)."""
        by_node = self.by_node
        marked = 0
        for node, key in touched:
            for mailbox in by_node.get(node, ()):
                dirty = mailbox.dirty
                if key in dirty or key[0] not in mailbox.kinds:
                    continue
                marked += 1
                if dirty:
                    dirty[key] = now
                    continue
                dirty[key] = now  # the first pending key: wake the sender
                if mailbox.on_ready is not None:
                    mailbox.on_ready()
        return marked

    def subscriber_count(self, node: str) -> int:
        """How many subscribers watch ``node``."""
        return len(self.by_node.get(node, ()))

    def depth(self) -> int:
        """Keys waiting to be looked at, summed over every subscriber."""
        return sum(len(m.dirty) for members in self.by_node.values() for m in members)

    def count(self) -> int:
        return sum(len(members) for members in self.by_node.values())
