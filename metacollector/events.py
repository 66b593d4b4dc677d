"""The core's vocabulary, defined once: what flows reflector -> hub -> reducer -> subscriptions.

- ``WatchType``: the type of a Kubernetes watch event that carries an object.
- ``Delta``: one such event for one object, as a reflector hands it to the hub (a relist's
  difference against the reflector's store is expressed in the same terms).
- ``Key``: (kind, uid), how everything downstream names an object.
- ``NodeKey``: (node, key), one key whose presence in ``view(node)`` or whose rendered event may
  have changed; the reducer reports these, the hub routes them into that node's mailboxes.
- ``Edit``: one object whose cluster-wide rendering changed (Create/Update/Delete), old and new
  versions; the hub turns these into the CloudEvents sink's ``ObjectChange``.
- ``Outcome``: what one ``Reducer.apply`` touched and changed.

(Like h11's ``_events.py``: the names here are the ones the docs and the code use.)
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from metacollector.model import Object

WatchType: TypeAlias = Literal["ADDED", "MODIFIED", "DELETED"]
WATCH_TYPES: tuple[WatchType, ...] = ("ADDED", "MODIFIED", "DELETED")

Key: TypeAlias = tuple[str, str]  # (kind, uid)
NodeKey: TypeAlias = tuple[str, Key]  # (node, key)


class Delta(msgspec.Struct, frozen=True, gc=False):
    """One watch event of one object (or one line of a relist's difference)."""

    type: WatchType
    kind: str  # one of model.KINDS
    obj: Object
    initial: bool = False  # from the reflector's first list: the object existed before we ran


class Edit(msgspec.Struct, frozen=True, gc=False):
    """One object whose rendering changed: ``old`` None for a Create, ``new`` None for a Delete,
    both set for an Update (the same version twice when only a pod's refs changed)."""

    kind: str
    old: Object | None
    new: Object | None


class Outcome(msgspec.Struct, gc=False):
    """What changes did: the (node, key) pairs to re-evaluate and the objects that changed
    (``changed`` None: not recorded, nobody asked)."""

    touched: list[NodeKey]
    changed: list[Edit] | None
