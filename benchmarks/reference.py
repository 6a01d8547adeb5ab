"""The reference choreo is measured against: the saga's happy path in plain redis-py.

    python -m benchmarks.reference inventory --mode plain --redis-url redis://127.0.0.1:6379/0

One process per service, as choreo runs them. Each reads its streams through its consumer group
(XREADGROUP COUNT 100 BLOCK 1000), reacts to the same events as choreo's service does on the happy
path (OrderCreated -> InventoryChecked -> PaymentProcessed -> ShippingArranged; every service also
consumes the event it emitted, as confirmation) and writes, per batch, one pipeline:

    plain    XADD of every event the batch caused, one XACK per stream with all its entry ids
    atomic   the same inside MULTI/EXEC, plus SET seen:<service>:<event id> 1 EX 604800 NX
             per entry: the cost of a dedup marker, in commands and in memory

What it leaves out, on purpose: domain state (stock, payments, shipments, orders), compensation,
deadlines, dead letters, claiming stale entries. In "atomic" the marker is written, not consulted
before emitting: consulting it inside the transaction would need a script or WATCH, which is
exactly the work choreo's commit does. So the two rows bound from above what a messaging layer
alone costs on this machine; they are not a second implementation of the saga.

Stream names, groups and entry fields have choreo's shape (bus/envelope.py), so `choreo bench`
places orders and reads outcomes the same way for both. SIGTERM or SIGINT: finish the batch in
hand, exit 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import uuid
from datetime import datetime, timezone

import redis

BATCH = 100
BLOCK_MS = 1000
SEEN_TTL_S = 7 * 24 * 3600          # choreo's default CHOREO_SEEN_TTL_S
MODES = ("plain", "atomic")

# What each service reads on the happy path: the same as its `consumes` in workers/*.py,
# restricted to the four happy events (tests/test_bench.py checks they agree).
CONSUMES: dict[str, tuple[str, ...]] = {
    "order": ("OrderCreated", "ShippingArranged"),
    "inventory": ("OrderCreated", "InventoryChecked", "ShippingArranged"),
    "payment": ("InventoryChecked", "PaymentProcessed", "ShippingArranged"),
    "shipping": ("PaymentProcessed", "ShippingArranged"),
}
# (service, event it reacts to) -> the event it emits; every other entry is only acknowledged.
REACTS: dict[tuple[str, str], str] = {
    ("inventory", "OrderCreated"): "InventoryChecked",
    ("payment", "InventoryChecked"): "PaymentProcessed",
    ("shipping", "PaymentProcessed"): "ShippingArranged",
}


def stream(event_type: str) -> str:
    return "events:" + event_type


def event(event_type: str, order_id: str, producer: str, data: dict, causation_id: str = "") -> dict:
    """An entry with choreo's envelope fields (id, type, order_id, causation_id, producer, at, v, data)."""
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"id": uuid.uuid4().hex, "type": event_type, "order_id": order_id,
            "causation_id": causation_id, "producer": producer, "at": at, "v": "1",
            "data": json.dumps(data, separators=(",", ":"), sort_keys=True)}


def create_groups(client: redis.Redis, service: str) -> None:
    for event_type in CONSUMES[service]:
        try:
            client.xgroup_create(stream(event_type), service, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def follow_ons(service: str, batch) -> tuple[list[tuple[str, dict]], dict[str, list[str]], list[str]]:
    """What one XREADGROUP reply causes: (stream, entry) to add, entry ids to ack per stream,
    and the event ids handled (for the dedup markers)."""
    adds, acks, seen = [], {}, []
    for stream_key, entries in batch:
        received = stream_key.removeprefix("events:")
        acks[stream_key] = [entry_id for entry_id, _ in entries]
        emits = REACTS.get((service, received))
        for _, fields in entries:
            seen.append(fields["id"])
            if emits:
                data = json.loads(fields["data"])
                adds.append((stream(emits), event(emits, fields["order_id"], service, data, fields["id"])))
    return adds, acks, seen


def commit(client: redis.Redis, service: str, mode: str, batch) -> None:
    """One round trip per batch: the follow-on events, the acks and (atomic) the markers."""
    adds, acks, seen = follow_ons(service, batch)
    pipe = client.pipeline(transaction=mode == "atomic")
    if mode == "atomic":
        for event_id in seen:
            pipe.set(f"seen:{service}:{event_id}", 1, ex=SEEN_TTL_S, nx=True)
    for stream_key, fields in adds:
        pipe.xadd(stream_key, fields)
    for stream_key, ids in acks.items():
        pipe.xack(stream_key, service, *ids)
    pipe.execute()


def run(client: redis.Redis, service: str, mode: str, consumer: str, stop: threading.Event) -> int:
    create_groups(client, service)
    streams = {stream(t): ">" for t in CONSUMES[service]}
    while not stop.is_set():
        batch = client.xreadgroup(service, consumer, streams, count=BATCH, block=BLOCK_MS)
        if batch:
            commit(client, service, mode, batch)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="choreo.benchmarks.reference", description=__doc__.splitlines()[0])
    ap.add_argument("service", choices=list(CONSUMES))
    ap.add_argument("--mode", choices=MODES, default="plain")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--slot", default="1", help="consumer name suffix, one per replica")
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())       # only a flag: the batch in hand is committed
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        return run(client, args.service, args.mode, f"{args.service}-{socket.gethostname()}-{args.slot}", stop)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
