"""The `choreo` command. Each verb is a short function; errors map to one line and an exit code:
2 for bad arguments or settings, 1 for an unreachable server or a failed run."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading

from bus import inspect, keys as bus_keys
from bus.connect import open_bus, redact
from bus.contract import BusUnavailable
from config.catalogue import CATALOGUE
from config.settings import Settings, SettingsError
from workers import SERVICES, keys
from workers.order import OrderRejected


class UsageError(Exception):
    """Bad arguments: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _out(line: str = "") -> None:
    print(line, flush=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _product(text: str) -> int:
    pid = _positive(text)
    if pid not in CATALOGUE:
        known = ", ".join(str(p) for p in CATALOGUE)
        raise argparse.ArgumentTypeError(f"unknown product {pid} (catalogue: {known})")
    return pid


def _order_id(text: str) -> str:
    # Ids go into key names and rq job ids (which may not contain ':').
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"order ids are 1-64 of A-Z a-z 0-9 _ . -, got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


# -- verbs ---------------------------------------------------------------------------------------

def cmd_demo(args, settings: Settings) -> int:
    from choreo.demo import run_demo
    bus = open_bus(args.redis_url or settings.redis_url)     # None: the embedded store
    try:
        return run_demo(bus, settings, out=_out)
    finally:
        bus.close()


def cmd_worker(args, settings: Settings) -> int:
    from workers.runtime import Worker, consumer_name
    service = SERVICES[args.service]
    consumer = args.consumer or consumer_name(service.name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())       # only a flag: the loop finishes its batch
    bus = open_bus(settings.url, check=False)           # the loop retries until Redis answers
    _out(f"{service.voice}: {consumer} on {redact(settings.url)}, consuming "
         f"{', '.join(service.consumes)}; emits {', '.join(service.emits)}")
    worker = Worker(service, bus, settings, consumer, log=_out,
                    housekeeping=_periodic_trim(bus, settings, service))
    try:
        return worker.run(stop)
    finally:
        bus.close()
        _out(f"{service.voice}: {consumer} stopped")


def _periodic_trim(bus, settings: Settings, service):
    """Housekeeping for a worker: trim every declared stream as far as all groups allow; log a
    stream only when something was trimmed or its blocked state changed (no log flood)."""
    from bus.trim import Retention, trim_streams
    retention = Retention(settings.trim_keep_entries, settings.trim_keep_seconds)
    blocked: dict[str, tuple] = {}

    def trim() -> None:
        for report in trim_streams(bus, SERVICES.values(), retention):
            if report.trimmed or blocked.get(report.stream, ()) != report.blocked_by:
                _out(f"{service.voice}: trim {report.line()}")
            blocked[report.stream] = report.blocked_by
    return trim


def _deadline(args, settings: Settings) -> float:
    return settings.order_deadline_s if args.deadline is None else args.deadline


def cmd_timers(args, settings: Settings) -> int:
    """The rq worker that fires scheduled events (order deadlines) when due."""
    import os
    import socket
    from bus.scheduler import run_timers
    bus = open_bus(settings.url)
    _out(f"timers: rq worker on {redact(settings.url)} (order deadlines, JSON serializer)")
    try:
        run_timers(bus.client, f"timers-{socket.gethostname()}-{os.getpid()}")
        return 0
    finally:
        bus.close()


def cmd_place_order(args, settings: Settings) -> int:
    from choreo.orders import OrderRequest, new_order_ids, place_orders
    bus = open_bus(settings.url)
    try:
        order_id = args.order_id or new_order_ids(bus, 1)[0]
        place_orders(bus, [OrderRequest(order_id, [{"product_id": args.product,
                                                     "quantity": args.quantity}])],
                     deadline_s=_deadline(args, settings))
        _out(order_id)
        return 0
    finally:
        bus.close()


def cmd_status(args, settings: Settings) -> int:
    bus = open_bus(settings.url)
    try:
        oid = args.order_id
        order, reservation, payment, shipment = bus.read_hashes(
            [keys.order(oid), keys.reservation(oid), keys.payment(oid), keys.shipment(oid)])
        if not order:
            _out(f"choreo: no order {oid}")
            return 1
        _out(f"order {oid}: {order['status']}" + (f" ({order['reason']})" if order.get("reason") else ""))
        _out(f"  total_cents={order['total_cents']} lines={order['lines']}")
        for name, h in (("reservation", reservation), ("payment", payment), ("shipment", shipment)):
            shown = " ".join(f"{k}={v}" for k, v in h.items() if k != "_v") or "-"
            _out(f"  {name}: {shown}")
        for item in inspect.list_items(bus, keys.order_history(oid)):
            _out(f"  history: {item}")
        return 0
    finally:
        bus.close()


def cmd_trace(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.trace import build_trace, load_events, order_dead_letters, render_tree, trace_json
    bus = open_bus(settings.url)
    try:
        events = load_events(bus, args.order_id)
        dead = order_dead_letters(bus, args.order_id)
        if not events and not dead:
            _out(f"choreo: no events for order {args.order_id}")
            return 1
        status = bus.read_hashes([keys.order(args.order_id)])[0].get("status", "")
        nodes = build_trace(bus, events, dead)
        if args.json:
            _out(trace_json(args.order_id, status, nodes, dead, events))
        else:
            # A pipe gets whole lines (grep-able), not lines cut at rich's default 80 columns.
            wide = sys.stdout.isatty() or "COLUMNS" in os.environ
            Console(width=None if wide else 400).print(render_tree(args.order_id, status, nodes, dead))
        return 0
    finally:
        bus.close()


def cmd_load(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.load import rich_progress, run_load, summary_table
    bus = open_bus(settings.url)
    try:
        with rich_progress(args.orders) as progress:
            result = run_load(bus, args.orders, args.timeout, args.product, args.quantity,
                              rate=args.rate, progress=progress, deadline_s=_deadline(args, settings))
        # The table goes to stderr, before the figures: scripts read stdout's last line.
        Console(stderr=True).print(summary_table(result))
        _out(result.figures())
        return 0 if result.finished == args.orders else 1
    finally:
        bus.close()


def cmd_dashboard(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.dashboard import print_once, run_live, sample_twice
    if args.once or args.json:
        bus = open_bus(settings.url)
        try:
            snapshot = sample_twice(bus, settings.url, args.refresh)
            if args.json:
                _out(snapshot.to_json())
            else:
                # A pipe has no width of its own; 80 columns would squeeze the groups table.
                wide = sys.stdout.isatty() or "COLUMNS" in os.environ
                print_once(snapshot, Console(width=None if wide else 160))
            return 0
        finally:
            bus.close()
    bus = open_bus(settings.url, check=False)     # the live view shows "disconnected" and retries
    try:
        return run_live(bus, settings.url, args.refresh, Console())
    except KeyboardInterrupt:
        return 0                                  # Ctrl-C is how one leaves a live view
    finally:
        bus.close()


def cmd_topology(args, settings: Settings) -> int:
    for s in SERVICES.values():
        _out(f"{s.name:<10} consumes {', '.join(s.consumes)}")
        _out(f"{'':<10} emits    {', '.join(s.emits)}")
    return 0


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_dlq(args, settings: Settings) -> int:
    from choreo import dlq
    if args.dlq_verb == "show" and args.entry.rpartition("/")[0] not in ("", *SERVICES):
        _err(f"choreo dlq show: unknown service in {args.entry!r} (one of {', '.join(SERVICES)})")
        return 2
    bus = open_bus(settings.url)
    try:
        if args.dlq_verb == "list":
            return dlq.list_cmd(bus, [args.service] if args.service else list(SERVICES), _out)
        if args.dlq_verb == "show":
            return dlq.show_cmd(bus, args.entry, list(SERVICES), _out)
        if args.dlq_verb == "replay":
            return dlq.replay_cmd(bus, args.service, SERVICES[args.service].streams,
                                  None if args.all else args.id, _out, _err)
        return dlq.purge_cmd(bus, args.service, _out)
    except dlq.DeadLetterError as exc:
        _err(f"choreo: {exc}")
        return 1
    finally:
        bus.close()


def cmd_audit(args, settings: Settings) -> int:
    from choreo.audit import run_audit
    bus = open_bus(settings.url)
    try:
        return run_audit(bus, SERVICES.values(), args.strict, _out, _err)
    finally:
        bus.close()


def cmd_trim(args, settings: Settings) -> int:
    from bus.trim import Retention, trim_streams
    bus = open_bus(settings.url)
    try:
        retention = Retention(keep_entries=args.keep_entries, keep_seconds=args.keep_seconds)
        for report in trim_streams(bus, SERVICES.values(), retention, dry_run=args.dry_run):
            _out(report.line())
        return 0
    finally:
        bus.close()


def _entry_id(text: str) -> str:
    """A stream entry id, `<ms>-<seq>`: checked here so Redis never sees a malformed one."""
    if not re.fullmatch(r"\d+-\d+", text.rpartition("/")[2]):
        raise argparse.ArgumentTypeError(f"expected an entry id like 1700000000000-0, got {text!r}")
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_dlq_verbs(sub, common) -> None:
    p = sub.add_parser("dlq", parents=[common], help="list, show, replay or purge dead letters")
    dsub = p.add_subparsers(dest="dlq_verb", required=True, parser_class=Parser)
    q = dsub.add_parser("list", parents=[common], help="dead letters of one service or all")
    q.add_argument("service", nargs="?", choices=list(SERVICES))
    q = dsub.add_parser("show", parents=[common], help="one dead letter in full")
    q.add_argument("entry", type=_entry_id, help="<service>/<dlq entry id>, or the bare id")
    q = dsub.add_parser("replay", parents=[common], help="put dead letters back on their stream")
    q.add_argument("service", choices=list(SERVICES))
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=_entry_id, help="the dlq entry id to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    q = dsub.add_parser("purge", parents=[common], help="delete a service's dead letters")
    q.add_argument("service", choices=list(SERVICES))
    p.set_defaults(run=cmd_dlq)


def _add_ops_verbs(sub, common) -> None:
    p = sub.add_parser("audit", parents=[common], help="check the saga's invariants in Redis")
    p.add_argument("--strict", action="store_true",
                   help="after a drained run: anything still in flight is a violation")
    p.set_defaults(run=cmd_audit)
    p = sub.add_parser("trim", parents=[common], help="trim streams as far as every group allows")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.add_argument("--keep-entries", type=_count, default=0,
                   help="also keep this many newest entries per stream")
    p.add_argument("--keep-seconds", type=_count, default=0,
                   help="also keep entries younger than this")
    p.set_defaults(run=cmd_trim)


# -- wiring --------------------------------------------------------------------------------------

def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL or "
                        "redis://localhost:6379/0; the demo runs embedded when neither is set)")
    parser = Parser(prog="choreo", description="An order saga choreographed over Redis Streams.")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)

    sub.add_parser("demo", parents=[common], help="run the tutorial's order 1 end to end") \
        .set_defaults(run=cmd_demo)
    p = sub.add_parser("worker", parents=[common], help="run one service's consumer loop")
    p.add_argument("service", choices=list(SERVICES))
    p.add_argument("--consumer", help="consumer name (default: <service>-<host>-<slot>)")
    p.set_defaults(run=cmd_worker)
    p = sub.add_parser("place-order", parents=[common], help="place one order; prints its id")
    p.add_argument("--product", type=_product, required=True)
    p.add_argument("--quantity", type=_positive, required=True)
    p.add_argument("--order-id", type=_order_id)
    p.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                   help="cancel unless shipped by then (default: $CHOREO_ORDER_DEADLINE_S or 300)")
    p.set_defaults(run=cmd_place_order)
    for verb, fn, text in (("status", cmd_status, "an order's state in every service"),
                           ("trace", cmd_trace, "an order's events in causal order")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("order_id")
        p.set_defaults(run=fn)
    p.add_argument("--json", action="store_true", help="the trace as JSON")      # trace's own
    p = sub.add_parser("load", parents=[common], help="place N orders and measure them")
    p.add_argument("--orders", type=_positive, required=True)
    p.add_argument("--timeout", type=_seconds, default=120.0)
    p.add_argument("--rate", type=_seconds, help="orders per second (default: as fast as possible)")
    p.add_argument("--product", type=_product, default=101)
    p.add_argument("--quantity", type=_positive, default=1)
    p.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                   help="each order's deadline (default: $CHOREO_ORDER_DEADLINE_S or 300)")
    p.set_defaults(run=cmd_load)
    sub.add_parser("timers", parents=[common], help="run the rq worker that fires order deadlines") \
        .set_defaults(run=cmd_timers)
    p = sub.add_parser("dashboard", parents=[common], help="live view of streams, groups, orders")
    p.add_argument("--refresh", type=_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (and between the two reads of --once/--json)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (no alternate screen)")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON and exit")
    p.set_defaults(run=cmd_dashboard)
    sub.add_parser("topology", parents=[common], help="which service consumes and emits what") \
        .set_defaults(run=cmd_topology)
    _add_dlq_verbs(sub, common)
    _add_ops_verbs(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = Settings.from_env(redis_url=args.redis_url)
    except (UsageError, SettingsError) as exc:
        print(f"choreo: {exc}" if isinstance(exc, SettingsError) else str(exc), file=sys.stderr)
        return 2
    try:
        return args.run(args, settings)
    except BusUnavailable as exc:
        print(f"choreo: {exc}", file=sys.stderr)
        return 1
    except OrderRejected as exc:
        print(f"choreo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
