"""Resource -> wire Event (SPEC section 1): meta/status JSON byte-exact, refs, protobuf bytes.

An event is rendered once per object version as a *body* (every Event field but ``reason``);
the message for a subscriber is ``reason`` prefix + body. Protobuf allows fields in any order,
so the concatenation is a valid Event, and the body bytes are shared by every subscriber.

The Event is encoded by hand: its schema is five strings and one map of string lists, and
building a upb message per pod version cost more than everything else the reducer does for it.
The bytes equal upb's deterministic serialization (tests/core/test_render.py checks both ways).
"""

from __future__ import annotations

from typing import Final

import msgspec

from metacollector.model import CLUSTER_SCOPED, KINDS, Object, Pod

Refs = tuple[tuple[str, tuple[str, ...]], ...]  # (kind, uids) pairs, kinds sorted

# Dict keys (labels) sorted; Struct fields in their declared order, which ``_Meta`` declares
# sorted ("sorted" would sort them again on every encode).
_json = msgspec.json.Encoder(order="deterministic")
_EMPTY_STATUS: Final = b"{}"


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Varints(dict[int, bytes]):
    """``_varint[n]``: the varint encoding of ``n``, the lengths up to 16383 precomputed (a
    dict lookup, no Python call: these prefix every field of every event)."""

    def __missing__(self, n: int) -> bytes:
        return _encode_varint(n)


_varint: Final = _Varints((n, _encode_varint(n)) for n in range(1 << 14))


def _field(tag: bytes, data: bytes) -> bytes:
    """One length-delimited field: tag, length, bytes."""
    return tag + _varint[len(data)] + data


# Tags (field number << 3 | wire type 2) of the Event fields we write.
_REASON, _UID, _KIND, _META, _STATUS, _REFS = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x32", b"\x3a"
_MAP_KEY, _MAP_VALUE, _LIST_ITEM = b"\x0a", b"\x12", b"\x0a"  # map entry key/value; list item
_KIND_FIELDS: Final = {kind: _field(_KIND, kind.encode()) for kind in KINDS}
_KIND_META: Final = {kind: field + _META for kind, field in _KIND_FIELDS.items()}  # + meta's tag
# The map key field of each kind's References entry (any other kind is encoded when met).
_MAP_KEYS: Final = {kind: _field(_MAP_KEY, kind.encode()) for kind in KINDS}


class _Meta(msgspec.Struct, omit_defaults=True, gc=False):
    """The ``meta`` JSON object, its fields in sorted order: generateName and labels only when
    set, namespace only for namespaced kinds. (A Struct encodes in C what a dict would first
    have to be built for.)"""

    generateName: str = ""
    labels: dict[str, str] | None = None
    name: str | msgspec.UnsetType = msgspec.UNSET
    namespace: str | msgspec.UnsetType = msgspec.UNSET
    uid: str | msgspec.UnsetType = msgspec.UNSET


def render_meta(kind: str, obj: Object) -> bytes:
    """The ``meta`` JSON: generateName, labels (when non-empty), name, namespace, uid; sorted."""
    m = obj.metadata
    namespace = msgspec.UNSET if kind in CLUSTER_SCOPED else m.namespace
    return _json.encode(_Meta(m.generateName, m.labels or None, m.name, namespace, m.uid))


def render_status(pod: Pod) -> bytes:
    """The ``status`` JSON of a pod: ``{"podIP":...}`` or ``{}`` before an IP is assigned."""
    ip = pod.status.podIP
    return b'{"podIP":' + _json.encode(ip) + b"}" if ip else _EMPTY_STATUS


def render_refs(refs: Refs) -> bytes:
    """The serialized ``References`` message: one map entry per kind, in the order given (the
    reducer's sorted order, which is upb's deterministic order too: no kind name is a prefix of
    another)."""
    entries: list[bytes] = []
    for kind, uids in refs:
        key = _MAP_KEYS.get(kind) or _field(_MAP_KEY, kind.encode())
        values = _list(uids)
        size = len(values)
        entry_size = len(key) + 1 + len(_varint[size]) + size  # + 1: the _MAP_VALUE tag
        entries += (_MAP_KEY, _varint[entry_size], key, _MAP_VALUE, _varint[size], values)
    return b"".join(entries)


def _list(uids: tuple[str, ...]) -> bytes:
    """A ListOfStrings message. UIDs are ASCII of one length (36): then one ``str.join`` in C
    builds it, one item per UID prefixed with its tag and length (a Pod selected by thousands
    of Services renders at C speed); short or other lists item by item."""
    if len(uids) > 8:  # (a few are cheaper item by item)
        size = len(uids[0])
        if size < 0x80 and len(set(map(len, uids))) == 1:
            separator = "\n" + chr(size)  # _LIST_ITEM, then the one-byte varint length
            joined = separator + separator.join(uids)
            if joined.isascii():
                return joined.encode()
    if len(uids) == 1:  # most lists: an owner's or the Namespace's UID
        return _field(_LIST_ITEM, uids[0].encode())
    return b"".join([_field(_LIST_ITEM, uid.encode()) for uid in uids])


def render_body(kind: str, obj: Object, encoded_refs: bytes | None) -> bytes:
    """Serialized Event without ``reason``: what Create and Update of this version share.

    ``encoded_refs`` is ``render_refs`` of a pod's refs (kept with the pod: refs change far
    less often than the pod does).
    """
    uid = obj.metadata.uid.encode()
    meta = render_meta(kind, obj)
    if not isinstance(obj, Pod):
        parts = [_UID, _varint[len(uid)], uid, _KIND_META[kind], _varint[len(meta)], meta]
    else:
        status, refs = render_status(obj), encoded_refs or b""
        parts = [
            _UID,
            _varint[len(uid)],
            uid,
            _KIND_META[kind],
            _varint[len(meta)],
            meta,
            _STATUS,
            _varint[len(status)],
            status,
            _REFS,
            _varint[len(refs)],
            refs,
        ]
    if not uid:
        del parts[:3]  # no uid field
    return b"".join(parts)


CREATE_PREFIX: Final = _field(_REASON, b"Create")
UPDATE_PREFIX: Final = _field(_REASON, b"Update")
_DELETE_PREFIX: Final = _field(_REASON, b"Delete")


def delete_message(kind: str, uid: str) -> bytes:
    """A Delete carries only reason, uid and kind."""
    encoded = uid.encode()
    if not encoded:
        return _DELETE_PREFIX + _KIND_FIELDS[kind]
    return b"".join((_DELETE_PREFIX, _UID, _varint[len(encoded)], encoded, _KIND_FIELDS[kind]))
