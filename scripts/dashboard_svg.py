"""Regenerate docs/dashboard.svg: the dashboard's frame from a real run, exported by rich.

    .venv/bin/python scripts/dashboard_svg.py --redis-url redis://localhost:6379/7
    .venv/bin/python scripts/dashboard_svg.py            # embedded fakeredis (no server version)

It runs the four services in this process (as `choreo demo` does) against the given Redis, places
a load of orders (a few over the card limit or the parcel limit, so compensations show, and one
malformed entry, so a dead letter shows), stops part way so the groups still lag, and exports what
`choreo dashboard` shows at that moment. It adds to the database it is given and deletes nothing:
point it at a scratch database.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from choreo.bus import keys as bus_keys  # noqa: E402
from choreo.bus.connect import open_bus  # noqa: E402
from choreo.bus.envelope import Envelope  # noqa: E402
from choreo.ops.dashboard import gather, heights, render  # noqa: E402
from choreo.orders import OrderRequest, new_order_ids, place_orders  # noqa: E402
from choreo.config.settings import Settings  # noqa: E402
from choreo.workers import SERVICES  # noqa: E402
from choreo.workers.runtime import Worker  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.svg"


def lines_for(i: int) -> list[dict]:
    """Mostly one Widget; every 25th order is over the card limit, every 40th over the parcel limit."""
    if i % 25 == 0:
        return [{"product_id": 102, "quantity": 101}]
    if i % 40 == 0:
        return [{"product_id": 101, "quantity": 51}]
    return [{"product_id": 101, "quantity": 1 + i % 3}]


def place(bus, n: int) -> None:
    ids = new_order_ids(bus, n)
    place_orders(bus, [OrderRequest(o, lines_for(int(o))) for o in ids])


def poison(bus) -> None:
    """One entry no service can read (an unknown schema version): it goes to dlq:inventory."""
    bad = {**Envelope.new("OrderCreated", "0", "order").fields(), "v": "9"}
    bus.client.xadd(bus_keys.stream("OrderCreated"), bad)


def run(bus, orders: int, rounds: int) -> list[Worker]:
    host = socket.gethostname()
    workers = [Worker(s, bus, Settings(), f"{s.name}-{host}-1")
               for s in SERVICES.values()]
    for w in workers:
        w.start()
    poison(bus)
    for _ in range(rounds):             # orders keep arriving faster than the workers finish them
        place(bus, orders // rounds)
        for w in workers:
            w.poll(block_ms=0)
    return workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="a scratch database (default: embedded fakeredis)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--orders", type=int, default=1200)
    parser.add_argument("--width", type=int, default=150)
    args = parser.parse_args(argv)
    bus = open_bus(args.redis_url)
    try:
        workers = run(bus, args.orders, rounds=6)
        first = gather(bus, args.redis_url)
        for _ in range(3):              # a second's worth of work, so the rates are real figures
            place(bus, 100)
            for w in workers:
                w.poll(block_ms=0)
            time.sleep(0.3)
        snapshot = gather(bus, args.redis_url, first)
    finally:
        bus.close()
    console = Console(record=True, width=args.width, height=sum(heights(snapshot)), file=open("/dev/null", "w"))
    console.print(render(snapshot))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(args.out), title="choreo dashboard")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
