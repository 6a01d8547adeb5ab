"""How a settled record is kept once filed (bus.keys.filed): one field of its bucket, the value a
JSON array, as short as it can be made while still naming everything. A bucket whose values are
all 64 bytes or less stays a listpack, which costs a few bytes a field; one longer value makes it a
hashtable, and then each value's allocation is rounded up to a size class: every byte counts.

    [<n: how many positional values follow>,
     <the value of each of the first n of its kind's FILED_KINDS fields, in order; null if absent>,
     <each trace field's name, "<stream> <entry id>">...,
     {<any other field>: <value>}]           (the object only when there is one)

`{"status": "SOLD", "events:InventoryChecked 1733…-0": ""}` of a kind filing ("status",) is
`[1,"SOLD","events:InventoryChecked 1733…-0"]`. A kind's fields may only ever be appended to: a
value filed with fewer is read by its own n; one filed with more than this version knows (a
newer version's, read by an older one) is `unreadable`.
"""

from __future__ import annotations

import msgspec

from choreo.bus import keys


class Filed(dict):
    """A record read from its bucket (not from a hash of its own): settled for good."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list).decode


def pack(key: str, record: dict[str, str]) -> str:
    """The bucket value of the record at `key` (its fields, `_v` left out by the caller)."""
    named = keys.FILED_KINDS.get(key.partition(":")[0], ())
    out: list = [len(named), *(record.get(name) for name in named)]
    rest = {k: v for k, v in record.items() if k not in named}
    out += [k for k, v in rest.items() if " " in k and v == ""]
    other = {k: v for k, v in rest.items() if not (" " in k and v == "")}
    if other:
        out.append(other)
    return _encode(out).decode()


def unpack(key: str, value: str | None) -> dict[str, str]:
    """The record a bucket value holds; {} for none. A value that is not one is still a record
    that exists, shown as `unreadable`: a handler that finds it must not take the id for new
    (and make the record again)."""
    if value is None:
        return {}
    try:
        items = _decode(value)
        n = items[0]
        named = keys.FILED_KINDS.get(key.partition(":")[0], ())
        if type(n) is not int or not 0 <= n <= min(len(named), len(items) - 1):
            raise ValueError("positional count")
        record = {name: v for name, v in zip(named, items[1:n + 1]) if v is not None}
        for item in items[n + 1:]:
            if isinstance(item, str):
                record[item] = ""
            else:
                record.update(item)
        if record and all(isinstance(v, str) for v in record.values()):
            return Filed(record)
    except (msgspec.DecodeError, TypeError, ValueError, AttributeError, IndexError):
        pass
    return Filed(unreadable=value[:200])
