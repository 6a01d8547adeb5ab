"""A choreography simulator: the four services' real handlers and the real commit (commit.lua on
the embedded fakeredis) in one process, driven step by step by a plan that says which service
handles which entry next. A plan is plain data, so hypothesis can explore and shrink plans, and a
shrunk counterexample is kept as a regular test (tests/test_simulator.py).

What a step can be, each a tuple (ignored when it cannot happen at that point):
    ("deliver", s, t)        service s reads the next new entry of its t-th stream, handles, commits
    ("crash", s, t)          service s reads it and handles it (arming timers) but dies before the
                             commit: the entry stays pending
    ("redeliver", s)         service s handles its pending entries again (a restart)
    ("drain", s)             service s handles everything new on all its streams (a busy worker)
    ("duplicate", s, t, k)   service s is handed the k-th entry of its t-th stream once more
    ("republish", t, k)      the k-th entry of the t-th stream is published again (a producer retry)
    ("tick", ms)             the clock moves on
    ("fire", o)              order o's deadline timer fires (the clock moves to its time if need be)
Indexes wrap around, so any tuple of small numbers is a valid step.

After the plan, `settle` runs everything left (pending, new, timers) to quiescence; then
`violations` checks the design's invariants (docs/design.md) and the issue's: one terminal state per order, nothing
shipped or charged after its deadline, stock conserved and never negative, money conserved, nothing both
shipped and refunded, every event type at most once per order (and the services agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import fakeredis

from choreo.bus import inspect, keys as bus_keys
from choreo.bus.contract import Delivery
from choreo.bus.redis_streams import RedisStreamsBus, decode_entry
from choreo.orders import OrderRequest, place_orders
from choreo.config.catalogue import CATALOGUE
from choreo.config.settings import Settings
from choreo.workers import PUBLISHERS, SERVICES, keys
from choreo.workers.deadlines import fire_deadline
from choreo.workers.order import TERMINAL
from choreo.workers.runtime import Worker
from choreo.workers.service import trace_keys
from choreo.workers.unit_of_work import BatchView

NAMES = list(SERVICES)
START = 1_800_000_000.0
# Generous: the plan decides how often an entry is redelivered, not a dead-letter policy.
SETTINGS = Settings(max_deliveries=1000, order_deadline_s=0)


class Clock:
    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now


class SimBus(RedisStreamsBus):
    """The real bus on fakeredis, with timers kept here instead of in rq."""

    def __init__(self):
        super().__init__(fakeredis.FakeRedis(decode_responses=True, encoding_errors="backslashreplace"))
        self.timers: dict[str, object] = {}

    def schedule(self, calls) -> None:
        for call in calls:
            self.timers[call.job_id] = call

    def unschedule(self, job_ids) -> None:
        for job_id in job_ids:
            self.timers.pop(job_id, None)


@dataclass(frozen=True)
class Order:
    product: int
    quantity: int
    deadline_s: float = 0


class Simulation:
    def __init__(self, orders: list[Order]):
        self.clock = Clock()
        self.bus = SimBus()
        self.workers = {n: Worker(SERVICES[n], self.bus, SETTINGS, f"{n}-sim",
                                  clock=self.clock, publishers=PUBLISHERS, timers=self.bus) for n in NAMES}
        for w in self.workers.values():
            w.start()
        self.order_ids = [str(i + 1) for i in range(len(orders))]
        for order_id, o in zip(self.order_ids, orders):
            place_orders(self.bus, [OrderRequest(order_id, [{"product_id": o.product, "quantity": o.quantity}])],
                         deadline_s=o.deadline_s, clock=self.clock)
        self.negative: list[str] = []

    # -- steps -----------------------------------------------------------------------------------
    def run(self, plan) -> None:
        for step in plan:
            getattr(self, "step_" + step[0])(*step[1:])
            self.check_stock_never_negative()

    def _worker(self, s: int) -> Worker:
        return self.workers[NAMES[s % len(NAMES)]]

    def _stream(self, w: Worker, t: int) -> str:
        return w.streams[t % len(w.streams)]

    def _read_new(self, w: Worker, t: int) -> list[Delivery]:
        return self.bus.read_new(w.service.name, w.consumer, [self._stream(w, t)], 1, 0)

    def step_deliver(self, s: int, t: int) -> None:
        w = self._worker(s)
        found = self._read_new(w, t)
        if found:
            w.commit_batch(found)

    def step_crash(self, s: int, t: int) -> None:
        w = self._worker(s)
        view = BatchView(self.bus)
        handled = [w.handle(d, w.parse(d), view) for d in self._read_new(w, t)]
        w.arm_timers([h for h in handled if h is not None])       # armed before a commit that never comes

    def step_drain(self, s: int) -> None:
        w = self._worker(s)
        while any(self._deliver_any(w, t) for t in range(len(w.streams))):
            pass

    def step_redeliver(self, s: int) -> None:
        w = self._worker(s)
        found = self.bus.read_own_pending(w.service.name, w.consumer, {x: "0" for x in w.streams}, 100)
        if found:
            w.commit_batch(found)

    def _entry(self, stream: str, k: int) -> Delivery | None:
        rows = self.bus.raw.xrange(stream)
        if not rows:
            return None
        entry_id, fields = rows[k % len(rows)]
        return decode_entry(stream, entry_id, fields)

    def step_duplicate(self, s: int, t: int, k: int) -> None:
        w = self._worker(s)
        d = self._entry(self._stream(w, t), k)
        if d is not None:
            w.commit_batch([d])

    def step_republish(self, t: int, k: int) -> None:
        streams = sorted({x for w in self.workers.values() for x in w.streams})
        d = self._entry(streams[t % len(streams)], k)
        if d is not None:
            self.bus.client.xadd(d.stream, d.fields)

    def step_tick(self, ms: int) -> None:
        self.clock.now += ms / 1000

    def step_fire(self, o: int) -> None:
        timers = [self.bus.timers[j] for j in sorted(self.bus.timers)]
        if not timers:
            return
        call = timers[o % len(timers)]
        self.clock.now = max(self.clock.now, call.at_ms / 1000)
        self.bus.timers.pop(call.job_id)
        fire_deadline(self.bus, *call.args, clock=self.clock)

    # -- what could happen next -------------------------------------------------------------------
    def enabled(self) -> list[tuple]:
        """Every step that would do something now: a scheduler draws from these, so each step of
        an explored run is a real event of some interleaving."""
        progress, trouble = [], []
        for s, name in enumerate(NAMES):
            w = self.workers[name]
            for t, stream in enumerate(w.streams):
                if self._has_new(name, stream):
                    progress.append(("deliver", s, t))
                    trouble.append(("crash", s, t))
                if self.bus.client.xlen(stream):
                    trouble.append(("duplicate", s, t, -1))
            if self._pending(name, w.streams):
                progress.append(("redeliver", s))
        progress += [("fire", o) for o in range(len(self.bus.timers))]
        streams = sorted({x for w in self.workers.values() for x in w.streams})
        trouble += [("republish", t, -1) for t, x in enumerate(streams) if self.bus.client.xlen(x)]
        # Progress first: hypothesis shrinks a choice towards the first, so a shrunk run is the
        # plainest interleaving that still fails, with only the trouble it needs.
        return progress + [("tick", 500), ("tick", 2500)] + trouble

    def busy(self) -> bool:
        return _progress(self.enabled())

    def _has_new(self, group: str, stream: str) -> bool:
        newest = self.bus.client.xrevrange(stream, count=1)
        if not newest:
            return False
        last = {g["name"]: g["last-delivered-id"] for g in self.bus.client.xinfo_groups(stream)}[group]
        return _id(newest[0][0]) > _id(last)

    def _pending(self, group: str, streams: list[str]) -> bool:
        return any(self.bus.client.xpending(x, group)["pending"] for x in streams)

    # -- to the end --------------------------------------------------------------------------------
    def settle(self, rounds: int = 200) -> None:
        """Everything left: pending entries, new entries, then timers in time order."""
        for _ in range(rounds):
            before = self.fingerprint()
            for s in range(len(NAMES)):
                self.step_redeliver(s)
                self.step_drain(s)
            if self.fingerprint() == before:
                if not self.bus.timers:
                    return
                self.step_fire(0)
            self.check_stock_never_negative()
        raise AssertionError("the saga did not settle")

    def _deliver_any(self, w: Worker, t: int) -> bool:
        found = self._read_new(w, t)
        if found:
            w.commit_batch(found)
        return bool(found)

    def fingerprint(self) -> tuple:
        streams = sorted({x for w in self.workers.values() for x in w.streams})
        return tuple(self.bus.client.xlen(x) for x in streams), len(self.bus.timers)

    # -- invariants ----------------------------------------------------------------------------------
    def check_stock_never_negative(self) -> None:
        for pid in CATALOGUE:
            stock = self.bus.read_hashes([keys.stock(pid)])[0]
            for name in ("available", "reserved", "sold"):
                if int(stock.get(name, 0)) < 0:
                    self.negative.append(f"stock:{pid} {name}={stock[name]}")

    def violations(self) -> list[str]:
        out = list(dict.fromkeys(self.negative))
        for pid, p in CATALOGUE.items():
            s = {k: int(v) for k, v in self.bus.read_hashes([keys.stock(pid)])[0].items() if k != "_v"}
            if s and s["start"] != s["available"] + s["reserved"] + s["sold"]:
                out.append(f"stock:{pid} not conserved: {s}")
        completed_total = 0
        for oid in self.order_ids:
            out += self.order_violations(oid)
            order = self.bus.read_hashes([keys.order(oid)])[0]
            if order.get("status") == "COMPLETED":
                completed_total += int(order["total_cents"])
        out += self.hold_violations()
        every = self.bus.read_hashes(keys.every(keys.payment_totals))
        money = sum(int(t.get("charged_cents", 0)) - int(t.get("refunded_cents", 0)) for t in every)
        if money != completed_total:
            out.append(f"money not conserved: charged-refunded={money}, completed orders={completed_total}")
        return out

    def hold_violations(self) -> list[str]:
        """Tagged layout (docs/partitions.md): each product's RESERVED holds are its reserved
        stock, and each belongs to a RESERVED reservation: nothing held twice or leaked."""
        out, held = [], {}
        for key in self.bus.client.scan_iter(match="hold:*"):
            h = self.bus.client.hgetall(key)
            pid, oid = key.split("{stock:")[1].split("}:")
            if h.get("status") == "RESERVED":
                held[pid] = held.get(pid, 0) + int(h["qty"])
                res = self.bus.read_hashes([keys.reservation(oid)])[0]
                if res.get("status") != "RESERVED":
                    out.append(f"{key} RESERVED but reservation {oid} is {res.get('status')}")
        for pid in CATALOGUE:
            s = self.bus.read_hashes([keys.stock(pid)])[0]
            if held and int(s.get("reserved", 0)) != held.get(str(pid), 0):
                out.append(f"stock:{pid} reserved {s.get('reserved')} but holds hold {held.get(str(pid), 0)}")
        return out

    def order_violations(self, oid: str) -> list[str]:
        order, res, pay, ship = self.bus.read_hashes(
            [keys.order(oid), keys.reservation(oid), keys.payment(oid), keys.shipment(oid)])
        status = order.get("status")
        out = []
        if status not in TERMINAL:
            out.append(f"order {oid} ends {status}, not terminal")
        created = self.created(oid)
        deadline = created.get("deadline_at_ms")
        if ship.get("status") == "BOOKED" and deadline is not None and int(ship["booked_at_ms"]) >= deadline:
            out.append(f"order {oid} shipped at {ship['booked_at_ms']}, after its deadline {deadline}")
        if pay.get("charged_at_ms") and deadline is not None and int(pay["charged_at_ms"]) >= deadline:
            out.append(f"order {oid} charged at {pay['charged_at_ms']}, after its deadline {deadline}")
        if ship.get("status") == "BOOKED" and pay.get("status") == "REFUNDED":
            out.append(f"order {oid} both shipped and refunded")
        agree = {"COMPLETED": ("SOLD", "CHARGED", "BOOKED")}.get(status)
        seen = (res.get("status"), pay.get("status"), ship.get("status"))
        if agree and seen != agree:
            out.append(f"order {oid} COMPLETED but reservation/payment/shipment are {seen}")
        if status in ("REJECTED", "CANCELLED") and ({"SOLD", "RESERVED", "CHARGED", "BOOKED"} & set(seen)):
            out.append(f"order {oid} {status} but reservation/payment/shipment are {seen}")
        published = [stream for stream, _ in inspect.trace_refs(self.bus, *trace_keys(oid, SERVICES.values()))]
        twice = sorted({x for x in published if published.count(x) > 1})
        if twice:
            out.append(f"order {oid} published {', '.join(twice)} more than once")
        return out

    def created(self, oid: str) -> dict:
        for stream, entry_id in inspect.trace_refs(self.bus, *trace_keys(oid, SERVICES.values())):
            if stream == bus_keys.stream("OrderCreated"):
                return json.loads(self.bus.client.xrange(stream, entry_id, entry_id)[0][1]["data"])
        return {}


def _progress(enabled: list[tuple]) -> bool:
    """Whether any of these steps moves the saga on (the rest are time and trouble)."""
    return any(step[0] in ("deliver", "redeliver", "fire") for step in enabled)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def explore(orders: list[Order], choose, max_steps: int = 80) -> tuple[list[tuple], list[str]]:
    """Run a simulation whose every next step is chosen (by `choose`, e.g. hypothesis's data.draw
    of one of the enabled steps) until nothing is left to do; returns the plan it took (replayable
    with simulate) and the violations."""
    sim = Simulation(orders)
    plan: list[tuple] = []
    while len(plan) < max_steps:
        enabled = sim.enabled()         # once a step (busy() would ask it again: half the time)
        if not _progress(enabled):
            break
        step = choose(enabled)
        plan.append(step)
        sim.run([step])
    sim.settle()
    return plan, sim.violations()


def simulate(orders: list[Order], plan) -> list[str]:
    sim = Simulation(orders)
    sim.run(plan)
    sim.settle()
    return sim.violations()
