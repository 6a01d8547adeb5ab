"""What a commit writes: typed operations, each encoded as the words bus/commit.lua reads.

A handler never builds these itself: workers.unit_of_work.UnitOfWork does (set, drop, add, count,
append, index, expire, settle, emit), so the choice that matters is made by name — `add` (AddTo) for an integer
field of a hash some handler reads, which bumps the hash's version so a racing commit that read
the old value is refused; `count` (Count) for an aggregate no handler reads, which does not.

Every op has `words(key)`: its name then its arguments, as strings or numbers, each key it touches
given as `key(name)`, that key's place in the script's KEYS (bus.redis_streams collects a batch's
distinct keys there; Redis Cluster routes by KEYS and ACL key patterns check them), 0 for none.
The script checks every op before it writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Callable, Mapping, Protocol, Union

# The ops are not frozen dataclasses, though nothing ever changes one: a handled entry makes a few,
# and a frozen dataclass's __init__ (object.__setattr__ per field) cost a worker 3.4% of its
# instructions (callgrind). The same holds for Envelope and Delivery.

KeyIndex = Callable[[str], str]     # a key's place in KEYS (1-based), as text; "" -> "0", no key


class Op(Protocol):
    def words(self, key: KeyIndex) -> tuple: ...


def _flat(fields: Mapping[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in (kv[0], str(kv[1]))]


@dataclass(slots=True)
class SetFields:
    """HSET fields of a hash; the hash's version goes up once per commit that writes it."""
    key: str
    fields: Mapping[str, str]

    def words(self, key: KeyIndex) -> tuple:
        return ("HSET", key(self.key), *_flat(self.fields))


@dataclass(slots=True)
class DropFields:
    """HDEL fields of a hash (what a settled record no longer needs): versioned like SetFields.
    Never the version `_v` itself (bus/commit.lua refuses it), so the hash never empties."""
    key: str
    fields: tuple[str, ...]

    def words(self, key: KeyIndex) -> tuple:
        return ("HDEL", key(self.key), *self.fields)


@dataclass(slots=True)
class AddTo:
    """HINCRBY an integer field of a hash handlers read (stock): versioned like SetFields."""
    key: str
    field: str
    amount: int

    def words(self, key: KeyIndex) -> tuple:
        return ("HINCRBY", key(self.key), self.field, str(int(self.amount)))


@dataclass(slots=True)
class Count:
    """HINCRBY an aggregate counter no handler reads (orders by status, payment totals): no
    version, so commits of many orders never conflict on it. Never for a hash a handler reads."""
    key: str
    field: str
    amount: int

    def words(self, key: KeyIndex) -> tuple:
        return ("COUNT", key(self.key), self.field, str(int(self.amount)))


@dataclass(slots=True)
class Append:
    """RPUSH a value to a list (an order's history)."""
    key: str
    value: str

    def words(self, key: KeyIndex) -> tuple:
        return ("RPUSH", key(self.key), self.value)


@dataclass(slots=True)
class Index:
    """ZADD a member with a score (the orders index, by creation time)."""
    key: str
    score: float
    member: str

    def words(self, key: KeyIndex) -> tuple:
        return ("ZADD", key(self.key), str(self.score), self.member)   # text, as Redis reads it


@dataclass(slots=True)
class Expire:
    """EXPIRE a key of any type that many seconds from now (retention of a settled part)."""
    key: str
    seconds: int

    def words(self, key: KeyIndex) -> tuple:
        return ("EXPIRE", key(self.key), str(self.seconds))


@dataclass(slots=True)
class File:
    """HSET one field of a bucket of settled records (bus.keys.filed): `value` is the record at
    `record`, packed by bus.filing, which a settling commit deletes. No version: a filed record
    never changes again, and a bucket is written by many orders' commits, which must not conflict
    on it. `record` and `unpacked` are not sent: they tell a batch's view which record moved and
    what it now reads as (bus.filing.unpack of `value`, given by its maker to spare the parse)."""
    key: str
    field: str
    value: str
    record: str = ""
    unpacked: Mapping[str, str] | None = dataclass_field(default=None, compare=False)

    def words(self, key: KeyIndex) -> tuple:
        return ("FILE", key(self.key), self.field, self.value)


@dataclass(slots=True)
class Publish:
    """XADD an event's fields to its stream; with `trace`, also add the line "<stream> <id>" to that
    trace (a hash of such fields, bus.inspect.trace_refs); with `max_len`, trim the stream to
    exactly its newest max_len entries (XADD MAXLEN)."""
    stream: str
    fields: Mapping[str, str]
    trace: str = ""
    max_len: int | None = None

    def words(self, key: KeyIndex) -> tuple:
        return ("PUBLISH", key(self.stream), key(self.trace), "" if self.max_len is None else str(self.max_len),
                *_flat(self.fields))


VERSIONED = (SetFields, DropFields, AddTo)      # the ops after which a hash's version is bumped
AnyOp = Union[SetFields, DropFields, AddTo, Count, Append, Index, Expire, File, Publish]
