"""The `choreo` command. Each verb is a short function; errors map to one line and an exit code:
2 for bad arguments or settings, 1 for an unreachable server or a failed run."""

from __future__ import annotations

import argparse
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
    try:
        return Worker(service, bus, settings, consumer, log=_out).run(stop)
    finally:
        bus.close()
        _out(f"{service.voice}: {consumer} stopped")


def cmd_place_order(args, settings: Settings) -> int:
    from choreo.orders import OrderRequest, new_order_ids, place_orders
    bus = open_bus(settings.url)
    try:
        order_id = args.order_id or new_order_ids(bus, 1)[0]
        place_orders(bus, [OrderRequest(order_id, [{"product_id": args.product,
                                                     "quantity": args.quantity}])])
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
    from choreo.trace import load_events, story, walk
    bus = open_bus(settings.url)
    try:
        events = load_events(bus, args.order_id)
        if not events:
            _out(f"choreo: no events for order {args.order_id}")
            return 1
        for depth, t in walk(events):
            e = t.event
            _out(f"{'  ' * depth}{e.type:<{20 - 2 * depth}} {t.stream} {t.entry_id}  "
                 f"producer={e.producer} at={e.at}")
        _out("")
        for line in story(events):
            _out(line)
        return 0
    finally:
        bus.close()


def cmd_load(args, settings: Settings) -> int:
    from choreo.load import rich_progress, run_load
    bus = open_bus(settings.url)
    try:
        with rich_progress(args.orders) as progress:
            result = run_load(bus, args.orders, args.timeout, args.product, args.quantity,
                              rate=args.rate, progress=progress)
        _out(result.figures())
        return 0 if result.finished == args.orders else 1
    finally:
        bus.close()


def cmd_topology(args, settings: Settings) -> int:
    for s in SERVICES.values():
        _out(f"{s.name:<10} consumes {', '.join(s.consumes)}")
        _out(f"{'':<10} emits    {', '.join(s.emits)}")
    return 0


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
    p.add_argument("--order-id")
    p.set_defaults(run=cmd_place_order)
    for verb, fn, text in (("status", cmd_status, "an order's state in every service"),
                           ("trace", cmd_trace, "an order's events in causal order")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("order_id")
        p.set_defaults(run=fn)
    p = sub.add_parser("load", parents=[common], help="place N orders and measure them")
    p.add_argument("--orders", type=_positive, required=True)
    p.add_argument("--timeout", type=_seconds, default=120.0)
    p.add_argument("--rate", type=_seconds, help="orders per second (default: as fast as possible)")
    p.add_argument("--product", type=_product, default=101)
    p.add_argument("--quantity", type=_positive, default=1)
    p.set_defaults(run=cmd_load)
    sub.add_parser("topology", parents=[common], help="which service consumes and emits what") \
        .set_defaults(run=cmd_topology)
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
