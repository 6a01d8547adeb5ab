"""How `choreo load` learns that its orders have ended: from the events that end an order, read
as they are published, instead of polling every pending order's record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from choreo.bus import inspect
from choreo.bus import keys as bus_keys
from choreo.bus.contract import Delivery
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.bus.trim import parse_id
from choreo.workers.order import ending_events

# Entries per stream per read: a large load's backlog comes in a few round trips.
READ_COUNT = 10_000


@dataclass(frozen=True)
class Ending:
    status: str         # what the order service makes of the event (COMPLETED, CANCELLED, ...)
    at_ms: int          # when the event was published


def published_ms(entry: Delivery) -> int:
    """The envelope's `at`; the entry id's time (the server's clock at XADD) if `at` is not a
    time: entries are input, and a malformed one must not stop the load."""
    try:
        return int(datetime.fromisoformat(entry.fields["at"].replace("Z", "+00:00")).timestamp() * 1000)
    except (KeyError, ValueError):
        return parse_id(entry.entry_id)[0]


class EndingWatch:
    """Reads the streams of the events that end an order (as the order service declares them),
    after the ids they had before the load placed its first order, so no ending of its orders is
    missed. Keeps the first ending of each watched order; other orders' entries are skipped."""

    def __init__(self, order_ids: Iterable[str], cursors: dict[str, str]):
        self.watched = set(order_ids)
        self.cursors = cursors
        self.endings: dict[str, Ending] = {}
        self._counts: dict[str, int] = {}       # endings by status, kept as they come (by_status)
        self.outages_seen = 0
        # Every partition's stream of each ending event (bus.layout).
        self._status = {stream: status for t, status in ending_events().items()
                        for stream in bus_keys.streams(t)}

    @classmethod
    def start(cls, bus: RedisStreamsBus, order_ids: Iterable[str]) -> "EndingWatch":
        streams = [stream for t in ending_events() for stream in bus_keys.streams(t)]
        return cls(order_ids, inspect.newest_ids(bus, streams))

    @property
    def waiting(self) -> int:
        return len(self.watched) - len(self.endings)

    def read(self, bus: RedisStreamsBus, block_ms: int = 0, outages: int = 0) -> None:
        """One XREAD over every stream (one per partition, pipelined: bus.inspect.read_after);
        block_ms > 0 waits that long for a first entry. outages
        is how many outages the caller has seen: after a new one, lost streams are rewound."""
        if outages != self.outages_seen:
            self._rewind_lost_streams(bus)
            self.outages_seen = outages
        for entry in inspect.read_after(bus, self.cursors, READ_COUNT, block_ms):
            self.cursors[entry.stream] = entry.entry_id
            self._note(entry)

    def _note(self, entry: Delivery) -> None:
        order_id = entry.fields.get("order_id")
        if order_id in self.watched and order_id not in self.endings:
            status = self._status[entry.stream]
            self.endings[order_id] = Ending(status, published_ms(entry))
            self._counts[status] = self._counts.get(status, 0) + 1

    def _rewind_lost_streams(self, bus: RedisStreamsBus) -> None:
        """A stream whose newest id is below our cursor was lost with a Redis that came back empty
        (or without its unsynced tail) and made anew; its new entries may have ids below the
        cursor (a server clock that went back), so it is read again from the start. An ending
        read twice counts once."""
        for stream, newest in inspect.newest_ids(bus, list(self.cursors)).items():
            if parse_id(newest) < parse_id(self.cursors[stream]):
                self.cursors[stream] = "0-0"

    def by_status(self) -> dict[str, int]:
        """Endings seen so far by status: asked after every read, so counted as they come, not
        by going over every ending each time."""
        return dict(self._counts)
