"""The event envelope: flat string fields, readable with redis-cli XRANGE; `data` is a JSON object.

    id            unique event id (32 hex chars); the dedup key for consumers
    type          event type, also the stream name's suffix
    order_id      the saga instance the event belongs to
    causation_id  id of the event whose handling emitted this one ("" for a command)
    producer      the service that published it
    at            publication time, ISO 8601 UTC with milliseconds
    v             schema version of the envelope
    data          JSON object, the event's payload
    traceparent   optional: W3C trace context of the span that published it (see workers.tracing);
                  absent unless tracing is on, and ignored (never dead-lettered) when malformed
    once          optional, written by the commit script only (bus/commit.lua): "1" when the
                  commit that published the event could not apply twice, so the event reaches its
                  stream once and consumers need no dedup id for it
    for           optional, written by `choreo dlq replay` only: the one group a replayed copy is
                  for; every other group acknowledges it and does nothing
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable, Mapping

import msgspec

SCHEMA_VERSION = "1"
# Order ids become parts of key names (order:<id>, trace:<id>) and rq job ids (no ':' allowed), so
# they are kept to a plain alphabet: an id like "1:history" could otherwise name another key.
ORDER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FIELDS = ("id", "type", "order_id", "causation_id", "producer", "at", "v", "data")
_REQUIRED = frozenset(FIELDS)
# Made once (the hot path). No NaN or Infinity: strict JSON, as every reader decodes it.
_DATA = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
_FAST = msgspec.json.Encoder(order="sorted")
decode_data = msgspec.json.Decoder().decode    # how every reader decodes `data` (strict JSON)


# How deep an event's data may nest. Deeper data parsed (~1,000 levels) but made each handler that
# copies it (encode_data) raise RecursionError, retried as a failure until max deliveries.
MAX_DEPTH = 64


def too_deep(text: str, data) -> bool:
    """Whether `data` (decoded from `text`) nests deeper than MAX_DEPTH: every reader refuses it.
    The brackets in the text bound the depth, so the walk is made only where there are many."""
    return text.count("[") + text.count("{") > MAX_DEPTH and _depth(data) > MAX_DEPTH


def _depth(data) -> int:
    """How many levels of lists and objects `data` nests (0 for a scalar), without recursion."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        value, level = todo.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, level)
        todo += [(v, level + 1) for v in value]
    return deepest


def encode_data(data) -> str:
    """`data` as compact JSON with sorted keys (text as UTF-8, not escaped). msgspec writes it in a
    fifth of the standard library's time; what msgspec would write differently is left to the
    strict encoder: it writes NaN and Infinity as null (so a null in the text means asking the
    strict one, which refuses them) and refuses what it cannot sort (keys that are not strings,
    which json writes as strings). A lone surrogate is refused by both (UnicodeEncodeError)."""
    try:
        text = _FAST.encode(data)
    except TypeError:
        return _DATA.encode(data)
    return _DATA.encode(data) if b"null" in text else text.decode()


def new_id() -> str:
    """32 random hex digits (os.urandom, as uuid4().hex), taken from a block read 64 ids at a time:
    one system call per id was a measurable part of emitting an event."""
    try:
        return _IDS.popleft()                   # deque: atomic across threads
    except IndexError:
        block = os.urandom(16 * 64).hex()
        _IDS.extend(block[i:i + 32] for i in range(32, len(block), 32))
        return block[:32]


_IDS: deque[str] = deque()
# A forked child (rq's work-horse) must not hand out the ids its parent will also hand out.
os.register_at_fork(after_in_child=_IDS.clear)


# W3C Trace Context `traceparent`: version-trace id-parent id-flags, lowercase hex; version ff and
# all-zero ids are invalid (https://www.w3.org/TR/trace-context/#traceparent-header).
TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str) -> str:
    """The value if it is a well-formed traceparent, else "": a bad one only loses the trace."""
    return value if TRACEPARENT.fullmatch(value) else ""


class MalformedEntry(ValueError):
    """A stream entry that can never be handled; the message is the reason kept in the DLQ."""


def iso_ms(ts: float) -> str:
    """ISO 8601 UTC, milliseconds truncated. Every event is stamped: the text up to the second is
    formatted once per second (strftime is most of the cost), the milliseconds appended."""
    frac, second = math.modf(ts)
    us = round(frac * 1_000_000)            # to the microsecond, as datetime.fromtimestamp rounds
    if not 0 <= us < 1_000_000:
        second, us = second + us // 1_000_000, us % 1_000_000
    return f"{_up_to_the_second(int(second))}.{us // 1000:03d}Z"


@lru_cache(maxsize=16)
def _up_to_the_second(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


# Made per entry and per emitted event, so made as cheaply as a dataclass can be: slots, and not
# frozen (a frozen one's __init__ sets each field through object.__setattr__, four times the cost).
# Nothing changes an envelope once made.
@dataclass(slots=True)
class Envelope:
    type: str
    order_id: str
    producer: str
    data: dict = field(default_factory=dict)
    causation_id: str = ""
    id: str = field(default_factory=new_id)
    at: str = ""
    v: str = SCHEMA_VERSION
    traceparent: str = ""
    once: bool = False          # published by a commit that could not apply twice (bus/commit.lua)

    @classmethod
    def new(cls, type: str, order_id: str, producer: str, data: dict | None = None,
            causation_id: str = "", clock: Callable[[], float] = time.time,
            traceparent: str = "") -> "Envelope":
        return cls(type=type, order_id=str(order_id), producer=producer, data=dict(data or {}),
                   causation_id=causation_id, at=iso_ms(clock()), traceparent=traceparent)

    def caused(self, type: str, producer: str, data: dict | None = None,
               clock: Callable[[], float] = time.time, traceparent: str = "") -> "Envelope":
        """A follow-on event of this one: same order, causation pointing here; traceparent is
        the span that handled this one, not this one's own."""
        return Envelope.new(type, self.order_id, producer, data, causation_id=self.id, clock=clock,
                            traceparent=traceparent)

    def fields(self) -> dict[str, str]:
        fields = {
            "id": self.id, "type": self.type, "order_id": self.order_id,
            "causation_id": self.causation_id, "producer": self.producer, "at": self.at,
            "v": self.v, "data": encode_data(self.data),
        }
        if self.traceparent:            # no empty field on the wire when tracing is off
            fields["traceparent"] = self.traceparent
        return fields

    @classmethod
    def parse(cls, raw: Mapping[str, str], max_bytes: int = 64 * 1024) -> "Envelope":
        """Validate a stream entry; raise MalformedEntry with the reason if it cannot be handled."""
        size = sum(map(len, raw)) + sum(map(len, raw.values()))
        if size > max_bytes:
            raise MalformedEntry(f"entry is {size} bytes, over the {max_bytes}-byte cap")
        if not raw.keys() >= _REQUIRED:
            raise MalformedEntry("missing field(s): " + ", ".join(f for f in FIELDS if f not in raw))
        if raw["v"] != SCHEMA_VERSION:
            raise MalformedEntry(f"unknown schema version {raw['v']!r} (this worker reads {SCHEMA_VERSION})")
        for name in ("id", "type", "order_id", "producer"):
            if not raw[name]:
                raise MalformedEntry(f"field {name!r} is empty")
        if not ORDER_ID.fullmatch(raw["order_id"]):
            raise MalformedEntry(f"order_id {raw['order_id'][:80]!r} is not 1-64 of A-Z a-z 0-9 _ . -")
        try:
            data = decode_data(raw["data"])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:   # strict: no NaN, no 1e400
            raise MalformedEntry(f"data is not JSON: {exc}") from None
        except RecursionError:
            raise MalformedEntry("data is nested too deeply to parse") from None
        text = raw["data"]      # too_deep(), inline: every entry of every worker passes here
        if text.count("[") + text.count("{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
            raise MalformedEntry(f"data is nested deeper than {MAX_DEPTH} levels")
        if not isinstance(data, dict):
            raise MalformedEntry(f"data must be a JSON object, got {type(data).__name__}")
        return cls(type=raw["type"], order_id=raw["order_id"], producer=raw["producer"], data=data,
                   causation_id=raw["causation_id"], id=raw["id"], at=raw["at"], v=raw["v"],
                   traceparent=valid_traceparent(raw.get("traceparent", "")),
                   once=raw.get("once") == "1")
