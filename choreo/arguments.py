"""Argument types for the `choreo` command: each checks one value and says what is wrong in one
line (argparse reports it; the command exits 2)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from choreo.bus.contract import is_entry_id
from choreo.bus.envelope import ORDER_ID
from choreo.config.catalogue import CATALOGUE
from choreo.config.settings import MAX_DEADLINE_S, plain_number
from choreo.workers.events import MAX_QUANTITY


class UsageError(Exception):
    """Bad arguments: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


@dataclass(frozen=True)
class Bounded:
    """An argument type for a finite number in least..most that can state its bounds in --help:
    nan, inf and 1e300 would reach sleeps, timeouts and deadlines, where they hang or overflow
    instead of failing here with one line."""
    least: float
    most: float
    kind: type = float          # int for whole numbers

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}") from None
        if not (math.isfinite(value) and self.least <= value <= self.most):
            raise argparse.ArgumentTypeError(f"must be {self.bounds}, got {text[:40]}")
        return value

    @property
    def bounds(self) -> str:
        return f"{plain_number(self.least)}..{plain_number(self.most)}"


# The command line's numbers; cli.py's --help text shows each one's bounds.
orders = Bounded(1, 1_000_000, int)             # one `choreo load` run
quantity = Bounded(1, MAX_QUANTITY, int)        # what an OrderCreated may carry
deadline = Bounded(0.1, MAX_DEADLINE_S)         # seconds: 30 days
load_timeout = Bounded(0.1, 24 * 3600)          # seconds: a day
rate = Bounded(0.01, 100_000)                   # orders per second
refresh = Bounded(0.05, 3600)                   # seconds; below, the dashboard would spin
trim_every = Bounded(0.1, 24 * 3600)            # seconds between the trimmer's rounds
keep_entries = Bounded(0, 10 ** 9, int)
retention = Bounded(1, 3650 * 24 * 3600, int)      # as CHOREO_RETENTION_S
seen_ttl = Bounded(60, 3650 * 24 * 3600, int)      # as CHOREO_SEEN_TTL_S
keep_seconds = Bounded(0, 3650 * 24 * 3600, int)    # ten years
max_silence = Bounded(0.1, 24 * 3600)           # seconds: `choreo health`
max_pending_age = Bounded(0.1, 30 * 24 * 3600)  # seconds: `choreo health`
product_id = Bounded(1, 10 ** 9, int)
port = Bounded(0, 65535, int)                   # a TCP port to serve /metrics on; 0: none


def product(text: str) -> int:
    pid = product_id(text)
    if pid not in CATALOGUE:
        known = ", ".join(str(p) for p in CATALOGUE)
        raise argparse.ArgumentTypeError(f"unknown product {pid} (catalogue: {known})")
    return pid


def order_id(text: str) -> str:
    # Ids go into key names and rq job ids (which may not contain ':').
    if not ORDER_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"order ids are 1-64 of A-Z a-z 0-9 _ . -, got {text!r}")
    return text


def consumer(text: str) -> str:
    """A consumer name: it names the consumer in the group and the worker's heartbeat key."""
    problem = consumer_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text[:80]!r}")
    return text


def consumer_problem(text: str) -> str:
    """Why `text` cannot name a consumer ("" if it can): 1-200 printable characters, no spaces,
    valid UTF-8 (a shell passes any bytes)."""
    if not 1 <= len(text) <= 200 or not text.isprintable() or any(c.isspace() for c in text):
        return "a consumer name is 1-200 printable characters without spaces"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "a consumer name must be valid UTF-8"
    return ""


def entry_id(text: str) -> str:
    """A stream entry id, `<ms>-<seq>`: checked here so Redis never sees a malformed one."""
    if not is_entry_id(text.rpartition("/")[2]):
        raise argparse.ArgumentTypeError(f"expected an entry id like 1700000000000-0 (each part "
                                         f"below 2^64), got {text!r}")
    return text



replica_count = Bounded(1, 16, int)             # processes of one service in `choreo bench`
bench_partitions = Bounded(1, 1024, int)        # the cluster rows' CHOREO_PARTITIONS (bus.layout's bounds)
bench_repeat = Bounded(1, 9, int)               # `choreo bench` rounds, each row once per round


def replicas(text: str) -> dict[str, int]:
    """`inventory=2,payment=3`: processes per service (the others run one)."""
    from choreo.workers import SERVICES
    counts: dict[str, int] = {}
    for pair in filter(None, text.split(",")):
        service, eq, count = pair.partition("=")
        if service not in SERVICES or not eq:
            raise argparse.ArgumentTypeError(
                f"expected <service>=<count>[,...] with a service of {', '.join(SERVICES)}, got {pair[:40]!r}")
        counts[service] = replica_count(count)
    return counts


def bench_rows(text: str) -> tuple[str, ...]:
    from choreo.measure.bench import ROWS
    rows = tuple(filter(None, text.split(",")))
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"rows are a comma list of {', '.join(ROWS)}, got {text[:60]!r}")
    return rows


def partition_set(text: str) -> tuple[int, ...]:
    """`0-7`, `3`, or `0,2,5-6`: the partitions a worker serves (checked against
    CHOREO_PARTITIONS when it starts)."""
    from choreo.bus.layout import MAX_PARTITIONS
    chosen: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected partitions like 0-7 or 0,2,5, got {text[:40]!r}") from None
        if not 0 <= first <= last < MAX_PARTITIONS:
            raise argparse.ArgumentTypeError(f"expected partitions like 0-7 or 0,2,5, got {text[:40]!r}")
        chosen.update(range(first, last + 1))
    return tuple(sorted(chosen))
