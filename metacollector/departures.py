"""The departure log: which objects recently left each node's view (SPEC section 2, lifecycle).

Falco's k8smeta plugin keeps its table across reconnects (Create/Update upsert, Delete erase,
never cleared) and the protocol has no reset message, so an object that left a node's view while
the plugin was away would stay in its table for good. The reducer reports every (node, key) at
the moment it leaves ``view(node)``; the hub records those here, and each subscribe of a node
gets a Delete for every recorded key of that node not in its view now (a fresh subscriber that
never held the object erases nothing; the plugin ignores unknown uids).

Sans-I/O: callers pass ``now`` (never decreasing; trio's clock). Bounded two ways:
- time: an entry is kept ``window`` seconds (default 600 s, longer than the plugin's longest
  reconnect backoff of 120 s); older ones are dropped on the next ``record`` or ``for_node``;
- memory: at most ``max_per_node`` entries per node (a node with a storm of short-lived pods
  forgets its own oldest, not other nodes') and ``max_entries`` in all; each entry evicted by
  a cap before its window ended is counted, since a subscriber away longer than that keeps a
  stale object.

Invariant: ``_nodes[node][key]`` is the latest record of (node, key); ``_order`` holds records
oldest first, some stale (re-recorded or evicted by the node cap) -- a record is live exactly
when ``_nodes[node][key] is record``. Stale records are compacted away once they outnumber the
live ones, so memory stays O(entries held).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:  # the flags' defaults are read from here; keep this module light to import
    from metacollector.events import Key

PLUGIN_MAX_BACKOFF: Final = 120.0  # k8smeta's reconnect backoff: 2 s doubling, capped here
DEFAULT_WINDOW: Final = 600.0
DEFAULT_MAX_PER_NODE: Final = 4096
DEFAULT_MAX_ENTRIES: Final = 200_000
_COMPACT_SLACK: Final = 1024  # stale records tolerated beyond the live count before compacting

Record = tuple[float, str, "Key"]  # (departed at, node, key), one tuple shared by both indexes


class Evicted(NamedTuple):
    """Entries a ``record`` call dropped before their window ended, by the cap that hit."""

    node_cap: int = 0
    total_cap: int = 0


class DepartureLog:
    """Per node, the keys that left its view within the last ``window`` seconds."""

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        max_per_node: int = DEFAULT_MAX_PER_NODE,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if window <= 0 or max_per_node <= 0 or max_entries <= 0:
            raise ValueError("departure window and caps must be positive")
        self.window = window
        self.max_per_node = max_per_node
        self.max_entries = max_entries
        self._nodes: dict[str, dict[Key, Record]] = {}
        self._order: deque[Record] = deque()
        self._held = 0
        self._now = float("-inf")

    def __len__(self) -> int:
        """Entries held (live records), for the metric and the caps."""
        return self._held

    def record(self, departed: Iterable[tuple[str, Key]], now: float) -> Evicted:
        """Remember that each (node, key) left ``view(node)`` at ``now``; apply window and caps."""
        now = self._now = max(now, self._now)
        nodes, order = self._nodes, self._order
        node_cap = 0
        for node, key in departed:
            entries = nodes.get(node)
            if entries is None:
                entries = nodes[node] = {}
            if entries.pop(key, None) is None:  # a re-departure moves to the end, held once
                self._held += 1
            record = (now, node, key)
            entries[key] = record
            order.append(record)
            if len(entries) > self.max_per_node:
                del entries[next(iter(entries))]  # this node's oldest; its record goes stale
                self._held -= 1
                node_cap += 1
        self._expire(now)
        total_cap = 0
        while self._held > self.max_entries:
            if self._drop(order.popleft()):
                total_cap += 1
        if len(order) > 2 * self._held + _COMPACT_SLACK:
            self._order = deque(r for r in order if self._live(r))
        return Evicted(node_cap, total_cap)

    def for_node(self, node: str, now: float) -> list[Key]:
        """The keys that left ``view(node)`` within the window, oldest departure first."""
        self._expire(max(now, self._now))
        entries = self._nodes.get(node)
        return list(entries) if entries is not None else []

    def _expire(self, now: float) -> None:
        """Drop every record older than the window (one exactly ``window`` old is kept)."""
        cutoff = now - self.window
        order = self._order
        while order and order[0][0] < cutoff:
            self._drop(order.popleft())

    def _live(self, record: Record) -> bool:
        entries = self._nodes.get(record[1])
        return entries is not None and entries.get(record[2]) is record

    def _drop(self, record: Record) -> bool:
        """Forget ``record``'s entry if it is still the live one; False for a stale record."""
        _, node, key = record
        entries = self._nodes.get(node)
        if entries is None or entries.get(key) is not record:
            return False
        del entries[key]
        if not entries:
            del self._nodes[node]
        self._held -= 1
        return True
