"""`choreo dashboard`: gather a Snapshot from Redis, render it (a pure function), refresh.

gather() (choreo.ops.snapshot) only reads, render() only draws (no I/O, tested through
Console(record=True)), run_live() is the short loop between them. Stream, group and key names all
come from the services' declarations (workers.SERVICES) and the key modules.

With partitions (bus.layout) the snapshot holds a row per partition's stream; drawn one by one
they would be a hundred rows for eight partitions. So the streams and groups panels add up each
event type's partitions (`events:{p*}:OrderCreated`), a group's state is the worst of its
partitions' and names the partitions not OK, and a "partitions" panel has a row per partition.
With one partition the screen is as it always was.

On a Redis Cluster a "nodes" band lists each node: its role, the primary a replica follows, its
link as the cluster sees it, its slots and the partitions it serves. Off a cluster there is no
such band.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from dataclasses import dataclass
from datetime import datetime

from rich import box
from rich.console import Console
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from choreo.bus import keys as bus_keys
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.plain import text
from choreo.workers import SERVICES
__all__ = ["STALE_AFTER_S", "STUCK_AFTER_S", "ConsumerRow", "DeadLetterRow", "EventRow", "GroupRow",
           "NodeRow", "OrdersView", "Snapshot", "StreamRow", "declared_streams", "gather", "gather_or_keep",
           "group_state", "render", "heights", "run_live", "sample_twice", "print_once"]
# The snapshot's names are re-exported: `choreo.ops.dashboard` is the one place to import the view from.
from choreo.ops.snapshot import (STALE_AFTER_S, STUCK_AFTER_S, ConsumerRow, DeadLetterRow,  # noqa: F401
                             EventRow, GroupRow, NodeRow, OrdersView, Snapshot, StreamRow, declared_streams,
                             gather, gather_or_keep, group_state)

STREAMS_WIDTH, ORDERS_WIDTH = 58, 32
STATE_STYLE = {"OK": "green", "LAGGING": "yellow", "STUCK": "bold red", "NO CONSUMERS": "bold magenta"}
WORST_FIRST = ("NO CONSUMERS", "STUCK", "LAGGING", "OK")
PARTITIONS_WIDTH = 64
NAMED_PARTITIONS = 3            # a summed group's state names this many partitions that are not OK


# -- partitions' rows added up (pure) --------------------------------------------------------------

def _sum(values) -> float | None:
    """None when any is None: a sum that leaves one partition out would read as the whole."""
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _worst(states) -> str:
    states = set(states)
    return next((st for st in WORST_FIRST if st in states), "OK")


def _ages(values) -> list[float]:
    return [v for v in values if v is not None]


def streams_by_type(rows: list[StreamRow]) -> list[StreamRow]:
    """Each event type's streams added up, named `events:{p*}:<type>`: length and rate summed,
    the newest entry the newest of any partition."""
    by_type: dict[str, list[StreamRow]] = {}
    for r in rows:
        by_type.setdefault(bus_keys.any_partition(r.stream), []).append(r)
    return [StreamRow(name, sum(r.length for r in rs), _sum(r.entries_added for r in rs),
                      _sum(r.per_s for r in rs), min(_ages(r.newest_age_s for r in rs), default=None),
                      max((r.last_id for r in rs), key=_id_key))
            for name, rs in sorted(by_type.items())]


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (seq or "0").isdigit() else (0, 0)


def groups_by_type(rows: list[GroupRow]) -> list[GroupRow]:
    """Each (event type, group) added up over the partitions; the state is the worst one, naming
    the partitions in it unless all are."""
    by_type: dict[tuple[str, str], list[GroupRow]] = {}
    for r in rows:
        by_type.setdefault((bus_keys.any_partition(r.stream), r.group), []).append(r)
    out = []
    for (name, group), rs in sorted(by_type.items()):
        state = _worst(r.state for r in rs)
        where = [f"p{bus_keys.partition_of(r.stream)}" for r in rs if r.state == state]
        if state != "OK" and len(where) < len(rs):
            more = len(where) - NAMED_PARTITIONS
            state += " " + ",".join(where[:NAMED_PARTITIONS]) + (f" +{more}" if more > 0 else "")
        out.append(GroupRow(name, group, max(r.consumers for r in rs), max(r.live_consumers for r in rs),
                            sum(r.pending for r in rs), _sum(r.lag for r in rs),
                            max(_ages(r.oldest_pending_age_s for r in rs), default=None),
                            max(r.max_deliveries for r in rs), max(r.max_idle_s for r in rs), state))
    return out


@dataclass(frozen=True)
class PartitionRow:
    partition: int
    entries: int                   # in its streams now
    per_s: float | None            # added to its streams per second
    pending: int                   # over its groups
    lag: int | None
    state: str                     # the worst of its groups'


def partition_rows(s: Snapshot) -> list[PartitionRow]:
    streams: dict[int, list[StreamRow]] = {p: [] for p in range(s.partitions)}
    groups: dict[int, list[GroupRow]] = {p: [] for p in range(s.partitions)}
    for r in s.streams:
        streams.setdefault(bus_keys.partition_of(r.stream), []).append(r)
    for g in s.groups:
        groups.setdefault(bus_keys.partition_of(g.stream), []).append(g)
    return [PartitionRow(p, sum(r.length for r in streams[p]), _sum(r.per_s for r in streams[p]),
                         sum(g.pending for g in groups.get(p, [])), _sum(g.lag for g in groups.get(p, [])),
                         _worst(g.state for g in groups.get(p, [])) if groups.get(p) else "-")
            for p in sorted(streams)]


# -- rendering (pure) ------------------------------------------------------------------------------

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s" if seconds >= 60 else f"{seconds:.0f}s"
    return f"{int(seconds) // 3600}h{int(seconds) % 3600 // 60:02d}m"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(*columns: str, flex: tuple[str, ...] = ()) -> Table:
    """Headings never shrink to "leng…"; only the `flex` columns give way on a narrow screen."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, expand=True, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 or name in _LEFT else "right", no_wrap=True,
                         overflow="ellipsis", ratio=3 if name in flex else None,
                         min_width=None if name in flex else len(name))
    return table


_LEFT = {"node", "role", "follows", "link", "partitions", "group", "consumer", "host:pid", "stream", "type", "state", "newest error", "status", "service", "order"}


def _row(table: Table, *cells: str | Text, **options) -> None:
    """Every string cell is plain text: group, consumer, status and type names and errors come
    from Redis, where `[/oops]` or an ESC is just what a hostile writer would put. A Text cell is
    one this module styled around a value it computed."""
    table.add_row(*(c if isinstance(c, Text) else text(c) for c in cells), **options)


def header(s: Snapshot) -> Text:
    refreshed = datetime.fromtimestamp(s.taken_at).strftime("%H:%M:%S") if s.taken_at else "-"
    if not s.connected:
        return text((s.url, "bold cyan"), "  ", ("DISCONNECTED", "bold white on red"),
                    f" {s.error}; retrying", f"  (figures from {refreshed})", "   q quits")
    return text((s.url, "bold cyan"), f"  Redis {s.server_version}  ping {_num(s.ping_ms, '{:.2f}')} ms"
                f"  refreshed {refreshed}   q quits")


def streams_table(s: Snapshot) -> Table | Text:
    if not s.streams:
        return Text("no streams yet: start the workers (honcho start) or place an order", style="dim")
    table = _table("stream", "length", "added/s", "newest")
    for r in (streams_by_type(s.streams) if s.partitions > 1 else s.streams):
        _row(table, r.stream, str(r.length), _num(r.per_s), _age(r.newest_age_s))
    return table


def groups_table(s: Snapshot) -> Table | Text:
    if not s.groups:
        return Text("no consumer groups yet: workers create them when they start", style="dim")
    table = _table("stream", "group", "consumers", "pending", "lag", "oldest pending",
                   "max deliveries", "state")
    for r in (groups_by_type(s.groups) if s.partitions > 1 else s.groups):
        _row(table, r.stream, r.group, f"{r.live_consumers}/{r.consumers}", str(r.pending),
                      "?" if r.lag is None else str(r.lag), _age(r.oldest_pending_age_s),
                      str(r.max_deliveries) if r.pending else "-",
                      Text(r.state, style=STATE_STYLE.get(r.state.split(" p")[0], "")))
    return table


def partitions_table(s: Snapshot) -> Table:
    table = _table("partition", "entries", "added/s", "pending", "lag", "state")
    for r in partition_rows(s):
        _row(table, f"p{r.partition}", str(r.entries), _num(r.per_s), str(r.pending),
             "?" if r.lag is None else str(r.lag), Text(r.state, style=STATE_STYLE.get(r.state, "dim")))
    return table


LINK_STYLE = {"connected": "green", "pfail": "yellow", "fail": "bold red", "disconnected": "bold red"}


def nodes_table(s: Snapshot) -> Table:
    table = _table("node", "role", "follows", "link", "slots", "partitions", flex=("partitions",))
    for r in s.nodes:
        _row(table, r.address, r.role, r.follows, Text(r.link, style=LINK_STYLE.get(r.link, "")),
             str(r.slots), " ".join(f"p{p}" for p in r.partitions) or "-")
    return table


def consumers_table(s: Snapshot) -> Table | Text:
    if not s.consumers:
        return Text("no consumers yet", style="dim")
    # host:pid gives way on a narrow screen; the state never does.
    table = _table("group", "consumer", "pending", "read", "state", "host:pid", flex=("host:pid",))
    for r in s.consumers:
        # The state is the heartbeat's own word (input, like every value from Redis): escaped.
        state = "GONE" if r.state == "gone" else "STALE" if r.stale else r.state
        _row(table, r.group, r.name, str(r.pending), _age(r.read_age_s),
             text((state, "bold red" if r.stale else "green")), f"{r.host}:{r.pid}")
    return table


def orders_table(s: Snapshot) -> Table:
    o = s.orders
    table = _table("status", "orders")
    for status, n in sorted(o.by_status.items()):
        _row(table, status, str(n))
    if not o.by_status:
        table.add_row(Text("none yet", style="dim"), "")
    table.add_row(Text("completed/s", style="dim"), _num(o.completed_per_s), end_section=False)
    table.add_row(Text(f"p50 ms ({o.sampled} recent)", style="dim"), _num(o.p50_ms, "{:.0f}"))
    table.add_row(Text("p99 ms", style="dim"), _num(o.p99_ms, "{:.0f}"))
    return table


def dead_letters_table(s: Snapshot) -> Table | Text:
    if not s.dead_letters:
        return Text("no services declared", style="dim")
    table = _table("service", "count", "newest error", "age", flex=("newest error",))
    for r in s.dead_letters:
        _row(table, r.service, Text(str(r.count), style="bold red" if r.count else ""),
                      r.newest_error or "-", _age(r.newest_age_s))
    return table


def events_table(s: Snapshot) -> Table | Text:
    if not s.events:
        return Text("no events yet", style="dim")
    table = _table("time (UTC)", "stream", "type", "order", flex=("stream",))
    for r in s.events:
        _row(table, r.at, r.stream, r.type, r.order_id)
    return table


def _height(rows: int) -> int:
    return max(rows, 1) + 4          # panel border (2), table header and its rule (2)


def _panel(title: str, body) -> Panel:
    return Panel(body, title=f"[bold]{title}", title_align="left", border_style="blue")


def heights(s: Snapshot) -> tuple[int, int, int, int, int]:
    """Rows each band needs: header, streams/orders/dead letters, groups, a cluster's nodes (0:
    not a cluster, no band), consumers/events."""
    orders = max(len(s.orders.by_status), 1) + 3 if s.orders is not None else 0
    partitioned = s.partitions > 1
    streams = streams_by_type(s.streams) if partitioned else s.streams
    groups = groups_by_type(s.groups) if partitioned else s.groups
    top = max(len(streams), orders, len(s.dead_letters))
    bottom = max(len(s.consumers), len(s.events), s.partitions if partitioned else 0)
    return 3, _height(top), _height(len(groups)), _height(len(s.nodes)) if s.nodes else 0, _height(bottom)


def render(s: Snapshot) -> Layout:
    """The whole screen for one snapshot; print it at height=sum(heights(s)) to see every row."""
    h_header, h_top, h_groups, h_nodes, h_bottom = heights(s)
    root = Layout()
    root.split_column(Layout(_panel("choreo dashboard", header(s)), size=h_header),
                      Layout(name="top", size=h_top),
                      Layout(_panel("consumer groups", groups_table(s)), size=h_groups),
                      *([Layout(_panel("nodes", nodes_table(s)), size=h_nodes)] if s.nodes else []),
                      Layout(name="bottom", ratio=1, minimum_size=h_bottom))
    # Streams and orders keep the width their figures need; dead letters' errors take the rest.
    root["top"].split_row(Layout(_panel("streams", streams_table(s)), size=STREAMS_WIDTH),
                          *([Layout(_panel("orders", orders_table(s)), size=ORDERS_WIDTH)]
                            if s.orders is not None else []),     # an app without orders: none
                          Layout(_panel("dead letters", dead_letters_table(s)), ratio=1))
    root["bottom"].split_row(*([Layout(_panel("partitions", partitions_table(s)), size=PARTITIONS_WIDTH)]
                               if s.partitions > 1 else []),
                             Layout(_panel("consumers", consumers_table(s)), ratio=1),
                             Layout(_panel("recent events", events_table(s)), ratio=1))
    return root


# -- refreshing ------------------------------------------------------------------------------------

@contextlib.contextmanager
def keypresses():
    """Yields wait(seconds) -> the key pressed meanwhile, or None. On a terminal stdin is put in
    cbreak mode (one key is enough, nothing echoes; Ctrl-C still interrupts) and restored on exit."""
    if not sys.stdin.isatty():
        yield lambda seconds: time.sleep(seconds)
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield lambda seconds: (os.read(fd, 1).decode(errors="replace")
                               if select.select([fd], [], [], seconds)[0] else None)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(bus: RedisStreamsBus, url: str | None, refresh_s: float, console: Console,
             services=SERVICES, orders: bool = True) -> int:
    from rich.live import Live
    snapshot = None
    with keypresses() as wait, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            snapshot = gather_or_keep(bus, url, snapshot, services, orders)
            live.update(render(snapshot), refresh=True)
            if (wait(refresh_s) or "").lower() == "q":
                return 0


def sample_twice(bus: RedisStreamsBus, url: str | None, interval_s: float,
                 services=SERVICES, orders: bool = True) -> Snapshot:
    """For --once and --json: two reads `interval_s` apart, so the rates are real figures."""
    first = gather(bus, url, services=services, orders=orders)
    time.sleep(interval_s)
    return gather(bus, url, first, services=services, orders=orders)


def print_once(snapshot: Snapshot, console: Console) -> None:
    console.print(render(snapshot), height=sum(heights(snapshot)))
