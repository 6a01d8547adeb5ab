"""Issue 7, part 2: nothing a Redis writer puts in a value reaches the terminal raw.

A hostile writer puts rich markup (`[/oops]`, which made the dashboard raise MarkupError), an OSC
(`ESC]0;pwned BEL`, retitles the terminal), a CSI (`ESC[2J`, clears it), an 8-bit CSI (C1 0x9b)
and a line break (forges a line of output) into every value the views show. render() must show
them as inert text; the real commands, against a real redis-server, must print no raw ESC."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
from rich.console import Console

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.ops.dashboard import (ConsumerRow, DeadLetterRow, EventRow, GroupRow, OrdersView, Snapshot,
                              StreamRow, heights, render)
from choreo.cli import main
from choreo.plain import plain, text
from choreo.ops.trace import DeadLetter, Reaction, TracedEvent, TraceNode, render_tree
from choreo.workers import keys

MARKUP = "[/oops]"
TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
C1_CSI = "\x9b2J"
# As the views must show them: visible escapes, the markup as written.
TITLE_SHOWN, CLEAR_SHOWN, C1_SHOWN = r"\x1b]0;pwned\x07", r"\x1b[2J", r"\x9b2J"
RAW = ("\x1b", "\x07", "\x9b")
SGR = re.compile(r"\x1b\[[0-9;]*m")        # colour and bold: the only escapes rich may emit


# -- plain() and text() ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    (TITLE, TITLE_SHOWN), (CLEAR, CLEAR_SHOWN), (C1_CSI, C1_SHOWN),
    ("a\nb\tc\rd", r"a\nb\tc\rd"), ("\x00\x7f\x85", r"\x00\x7f\x85"),
    ("\udcff\udcfe", r"\udcff\udcfe"),                 # lone surrogates (undecodable bytes)
    ("abc\u202edef", r"abc\u202edef"),                 # right-to-left override
])
def test_plain_escapes_what_a_terminal_would_act_on(raw, shown):
    assert plain(raw) == shown
    shown.encode("ascii")                              # printable on any terminal


@pytest.mark.parametrize("value", [MARKUP, "[bold red]x[/]", "café ✓ 注文", "C:\\path", ""])
def test_plain_leaves_printable_text_alone(value):
    assert plain(value) == value


def test_text_is_never_markup():
    t = text((MARKUP, "bold"), " ", "[red]" + TITLE)
    assert t.plain == f"{MARKUP} [red]{TITLE_SHOWN}"
    assert [span.style for span in t.spans] == ["bold"]


# -- render() of hostile values --------------------------------------------------------------------

def hostile_snapshot() -> Snapshot:
    evil = MARKUP + TITLE
    return Snapshot(
        url="redis://cache:6379/0", server_version=MARKUP + CLEAR, ping_ms=0.4, server_time_ms=1,
        taken_at=1.0,
        streams=[StreamRow("events:OrderCreated", 1, 1, None, 0.1, "1-0")],
        groups=[GroupRow("events:OrderCreated", evil, 1, 1, 1, 0, 1.0, 1, 1.0, "OK")],
        consumers=[ConsumerRow(evil, CLEAR + C1_CSI, TITLE, C1_CSI, MARKUP + CLEAR, 1, 0.1, False),
                   ConsumerRow(evil, MARKUP, TITLE, CLEAR, CLEAR + C1_CSI, 1, 0.1, True)],
        orders=OrdersView({evil: 3}),
        dead_letters=[DeadLetterRow("inventory", "dlq:inventory", 1, TITLE + CLEAR, 1.0)],
        events=[EventRow("00:00:00.001", "events:OrderCreated", MARKUP, CLEAR, "1-0")])


def terminal_output(renderable, height: int | None = None) -> str:
    """What a colour terminal receives."""
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="truecolor", width=240,
            height=height).print(renderable)
    return out.getvalue()


def recorded_text(renderable, height: int | None = None) -> str:
    console = Console(record=True, width=240, height=height, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_dashboard_renders_hostile_values_as_text():
    s = hostile_snapshot()
    shown = recorded_text(render(s), sum(heights(s)))
    for part in (MARKUP + TITLE_SHOWN, CLEAR_SHOWN + C1_SHOWN, TITLE_SHOWN + CLEAR_SHOWN,
                 f"{MARKUP}{CLEAR_SHOWN}"):
        assert part in shown
    assert not any(c in shown for c in RAW)
    assert not any(c in SGR.sub("", terminal_output(render(s), sum(heights(s)))) for c in RAW)


def test_dashboard_shows_a_disconnect_error_as_text():
    s = dataclasses.replace(hostile_snapshot(), connected=False, error=f"refused {MARKUP}{TITLE}")
    assert f"DISCONNECTED refused {MARKUP}{TITLE_SHOWN}; retrying" in recorded_text(render(s), sum(heights(s)))


def hostile_trace() -> tuple[list[TraceNode], list[DeadLetter]]:
    event = Envelope(type=MARKUP + CLEAR, order_id="66", producer=TITLE, at=C1_CSI)
    entry = json.dumps({"id": event.id, "order_id": "66"})
    letter = DeadLetter("inventory", MARKUP, "1-0", 3, CLEAR, TITLE + "\nforged", entry, len(entry),
                        "0" * 64, False, dlq_id="2-0")
    node = TraceNode(0, TracedEvent(event, "events:OrderCreated", "1-0"), [f"says {MARKUP}"],
                     [Reaction("payment", "PaymentService: x", f"pending (delivery 1 on {TITLE})")],
                     [letter])
    return [node], [letter, dataclasses.replace(letter, dlq_id="3-0", error=CLEAR)]


def test_trace_tree_renders_hostile_values_as_text():
    nodes, dead = hostile_trace()
    tree = render_tree("66", MARKUP, nodes, dead)
    shown = recorded_text(tree)
    assert f"order 66  {MARKUP}" in shown
    assert f"{MARKUP}{CLEAR_SHOWN}  events:OrderCreated 1-0  producer={TITLE_SHOWN} at={C1_SHOWN}" in shown
    assert f"[pending (delivery 1 on {TITLE_SHOWN})]" in shown
    assert f"after 3 deliveries: {CLEAR_SHOWN} (at {TITLE_SHOWN}\\nforged)" in shown
    assert not any(c in SGR.sub("", terminal_output(tree)) for c in RAW)


# -- the real commands against a real redis-server -------------------------------------------------

ORDER = "66"


def write_hostile(c) -> dict[str, str]:
    """What a writer with access to Redis can leave for an operator to look at."""
    c.hset(keys.order(ORDER), mapping={"id": ORDER, "status": MARKUP, "total_cents": CLEAR,
                                       "reason": f"{TITLE}\norder {ORDER}: COMPLETED",
                                       "lines": f"[bold]{C1_CSI}", "ended_by": f"{TITLE} {MARKUP}",
                                       "ended_at_ms": C1_CSI})
    c.hset(keys.reservation(ORDER), mapping={CLEAR: TITLE})
    c.hincrby(keys.orders_by_status(), MARKUP + TITLE, 1)
    stream = bus_keys.stream("OrderCreated")
    event = {**Envelope.new("OrderCreated", ORDER, "order").fields(),
             "type": MARKUP + CLEAR, "producer": TITLE, "at": C1_CSI}
    entry_id = c.xadd(stream, event)
    c.rpush(bus_keys.trace(ORDER), f"{stream} {entry_id}")
    c.xgroup_create(stream, MARKUP + CLEAR, id="0")
    c.xreadgroup(MARKUP + CLEAR, TITLE, {stream: ">"})           # pending on a hostile consumer
    letter = c.xadd(bus_keys.dead_letters("inventory"), {
        "stream": MARKUP, "entry_id": entry_id, "group": "inventory", "deliveries": CLEAR,
        "error": TITLE, "at": C1_CSI, "entry": json.dumps(event)})
    broken = c.xadd(bus_keys.dead_letters("order"), {"stream": stream, "error": CLEAR,
                                                     "entry": f"not JSON {TITLE}"})
    return {"letter": f"inventory/{letter}", "broken": f"order/{broken}"}


def test_commands_print_hostile_values_escaped(procs, real_bus):
    refs = write_hostile(real_bus.client)
    runs = {"status": ("status", ORDER), "trace": ("trace", ORDER), "dlq list": ("dlq", "list"),
            "dlq show": ("dlq", "show", refs["letter"]), "dlq show broken": ("dlq", "show", refs["broken"]),
            "dashboard": ("dashboard", "--once", "--refresh", "0.05")}
    out = {}
    for name, argv in runs.items():
        r = procs.run(*argv, COLUMNS=300)
        assert r.returncode == 0, (name, r.stderr)
        assert not any(c in r.stdout + r.stderr for c in RAW), (name, r.stdout)
        out[name] = r.stdout
    status = out["status"].splitlines()
    assert status[0] == f"order {ORDER}: {MARKUP} ({TITLE_SHOWN}\\norder {ORDER}: COMPLETED)"
    assert f"  reservation: {CLEAR_SHOWN}={TITLE_SHOWN}" in status
    assert f"  history: {C1_SHOWN} {MARKUP} {TITLE_SHOWN} {MARKUP}" in status     # ended_at_ms, ended_by
    assert f"{MARKUP}{CLEAR_SHOWN}  events:OrderCreated" in out["trace"]
    # deliveries is a number in the record: a hostile value there reads as 0
    assert f"deliveries=0  at={C1_SHOWN}  error={TITLE_SHOWN}" in out["dlq list"]
    assert f"  error: {TITLE_SHOWN}" in out["dlq show"].splitlines()
    assert f"  entry (not a JSON object): not JSON {TITLE_SHOWN}" in out["dlq show broken"].splitlines()
    # group, consumer, event type, dead letter's error; the narrow orders panel cuts the status
    for part in (f"{MARKUP}{CLEAR_SHOWN}", TITLE_SHOWN, CLEAR_SHOWN, MARKUP + r"\x1b]0;pwned"):
        assert part in out["dashboard"]


def test_trace_json_keeps_hostile_values_exact(procs, real_bus):
    write_hostile(real_bus.client)
    r = procs.run("trace", ORDER, "--json")
    assert r.returncode == 0 and "\x1b" not in r.stdout
    assert json.loads(r.stdout)["events"][0]["type"] == MARKUP + CLEAR


def test_status_of_an_order_hash_missing_its_fields(real_bus, redis_url, capsys):
    real_bus.client.hset(keys.order("67"), "reason", CLEAR)
    assert main(["status", "67", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"order 67: ? ({CLEAR_SHOWN})", "  total_cents=? lines=?"]
