"""Runtime settings: one frozen dataclass, read from the environment once and passed around."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Mapping

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class SettingsError(ValueError):
    """An environment variable holds a value the runtime cannot use."""


@dataclass(frozen=True)
class Settings:
    # None means "not configured": `choreo demo` then runs on an embedded in-memory Redis;
    # every other command uses DEFAULT_REDIS_URL.
    redis_url: str | None = None
    # Where rq's queue lives (CHOREO_TIMERS_URL): a plain Redis of its own, needed when REDIS_URL is
    # a Redis Cluster (rq's transactions span slots). None: rq on REDIS_URL's server, as always.
    # Timer jobs publish into REDIS_URL either way.
    timers_url: str | None = None
    # Entries read per stream per XREADGROUP call; the batch is committed in one round trip.
    # 100, the references' COUNT: 50 gave 0.48x the atomic reference's orders/s, 100 0.52x and
    # 200..1000 about 0.56x for more memory (docs/benchmarks.md, "Batch size").
    batch_size: int = 100
    # XREADGROUP BLOCK. Kept <= 1000 so a SIGTERM is noticed well inside honcho's 5 s.
    block_ms: int = 1000
    # An entry pending this long on any consumer is claimed (XAUTOCLAIM) by a live one.
    claim_idle_ms: int = 15_000
    # How often a worker looks for stale pending entries.
    claim_every_s: float = 2.0
    # Deliveries (XPENDING times-delivered) after which a failing entry is dead-lettered.
    max_deliveries: int = 5
    # A failed entry is retried after retry_base_ms * 2^(deliveries-1), capped at retry_max_ms.
    retry_base_ms: int = 500
    retry_max_ms: int = 30_000
    # Consumers idle this long and holding nothing pending are removed from their group.
    stale_consumer_ms: int = 3_600_000
    # How often a worker does housekeeping (stale consumers, trimming).
    housekeeping_every_s: float = 30.0
    # Acknowledged history kept when workers trim streams (never trims what a group still needs).
    trim_keep_entries: int = 10_000
    trim_keep_seconds: float = 3600.0
    # How long a service remembers that it handled an event id (the dedup marker's TTL).
    seen_ttl_s: int = 7 * 24 * 3600
    # Entries whose fields add up to more than this go to the dead-letter stream unhandled.
    max_entry_bytes: int = 64 * 1024
    # Reconnect backoff: 0.5 s doubling up to this cap.
    reconnect_max_s: float = 5.0
    # "plain" or "json" (choreo.logs).
    log_format: str = "plain"
    # DEBUG, INFO, WARNING, ERROR or CRITICAL: WARNING drops the per-event lines (INFO), keeping
    # retries, dead letters and reconnects.
    log_level: str = "INFO"
    # A worker (and the timers process) renews its heartbeat key this often; the key lives three
    # periods, so a stopped or frozen process stops counting as live within 3 * this.
    heartbeat_every_s: float = 1.5
    # An order not completed this long after it was placed is cancelled (unless already shipped).
    # Armed as an rq job by the order service; 0 places orders without a deadline.
    order_deadline_s: float = 300.0
    # Fault injection for tests and chaos runs: sleep this long between handling a batch and
    # committing it, widening the window in which a SIGKILL leaves entries pending.
    commit_delay_ms: int = 0
    # Dead letters kept per service: writing one trims dlq:<service> to its newest this many.
    dlq_max_entries: int = 10_000
    # How long an order's keys are kept once it has ended and each service's part of it is final
    # (docs/keys.md, "Retention"). It is also how late an event may arrive and still find the state that
    # makes it a no-op: keep it longer than any service may be down or behind.
    retention_s: int = 86400
    # A worker serves Prometheus metrics on this port (`--metrics-port`; needs choreo[metrics]);
    # 0 serves none. CHOREO_METRICS_PORT_<SERVICE> gives each service its own.
    metrics_port: int = 0
    # The address /metrics listens on (all interfaces by default, for a Prometheus elsewhere).
    metrics_addr: str = "0.0.0.0"
    # OpenTelemetry trace context on events, a span per handling and commit (needs choreo[tracing];
    # docs/operations.md, "Tracing"). Off: nothing of OpenTelemetry is imported, events carry no traceparent.
    tracing: bool = False
    # After each commit, WAIT until this many replicas have it (at most wait_timeout_ms): a
    # primary that dies right after a commit then loses nothing a replica did not get. 0: no
    # WAIT (replication is asynchronous; see docs/cluster.md for what that can lose).
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    @property
    def url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, service: str | None = None,
                 **overrides) -> "Settings":
        """CHOREO_<FIELD> for everyone; for a worker of `service` (or a role: timers, trimmer,
        dashboard, admin), CHOREO_<FIELD>_<SERVICE> wins (e.g. CHOREO_MAX_DELIVERIES_PAYMENT=10,
        or REDIS_URL_PAYMENT with the payment user's credentials); explicit overrides (CLI flags)
        win over both."""
        env = os.environ if env is None else env
        values: dict = {}
        used: dict[str, str] = {}           # field -> the variable that set it
        for f in fields(cls):
            base = "REDIS_URL" if f.name == "redis_url" else "CHOREO_" + f.name.upper()
            names = [base] + ([f"{base}_{service.upper()}"] if service else [])
            for name in names:
                raw = env.get(name)
                if raw:
                    values[f.name], used[f.name] = _coerce(name, raw, f.default), name
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for given in (values, overrides):
            if isinstance(given.get("log_level"), str):
                given["log_level"] = given["log_level"].upper()
        settings = replace(cls(**values), **overrides)
        settings.validate({**used, **{k: f"--{k.replace('_', '-')}" for k in overrides}})
        return settings

    def validate(self, names: Mapping[str, str] | None = None) -> None:
        """Refuse a value the runtime cannot use; names: field -> the variable that set it, for
        the message (default CHOREO_<FIELD>)."""
        def shown(name: str) -> str:
            return (names or {}).get(name, "CHOREO_" + name.upper())
        for name, (least, most) in BOUNDS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and least <= value <= most):
                raise SettingsError(f"{shown(name)} must be {plain_number(least)}.."
                                    f"{plain_number(most)}, got {plain_number(value)}")
        if self.retry_base_ms > self.retry_max_ms:
            raise SettingsError(f"{shown('retry_base_ms')} ({self.retry_base_ms}) must not exceed "
                                f"{shown('retry_max_ms')} ({self.retry_max_ms})")
        if self.log_format not in ("plain", "json"):
            raise SettingsError(f"log format must be plain or json, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"{shown('log_level')} must be one of {', '.join(LOG_LEVELS)}, "
                                f"got {self.log_level[:40]!r}")


DAY_S = 24 * 3600
# An order's deadline, from the environment or `--deadline`: past 30 days it is not a deadline.
MAX_DEADLINE_S = 30 * DAY_S
# (least, most) of each number. The upper bounds keep times inside what Redis and a datetime hold
# and catch a unit mistake (ms given for s); the lower ones are where the runtime stops working.
BOUNDS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 1000),
    "block_ms": (1, 1000),                      # <= 1 s: SIGTERM is noticed well inside 5 s
    "claim_idle_ms": (100, DAY_S * 1000),       # below, a busy consumer loses work to claims
    "claim_every_s": (0.01, 3600),
    "max_deliveries": (1, 1000),
    "retry_base_ms": (1, 3600 * 1000),
    "retry_max_ms": (1, 3600 * 1000),
    "stale_consumer_ms": (1000, 30 * DAY_S * 1000),
    "housekeeping_every_s": (0.1, DAY_S),
    "trim_keep_entries": (0, 10 ** 9),
    "trim_keep_seconds": (0, 3650 * DAY_S),
    "seen_ttl_s": (60, 3650 * DAY_S),           # shorter, a redelivery could apply an event twice
    "max_entry_bytes": (8 * 1024, 16 * 1024 * 1024),    # the largest valid event is about 5 KB
    "reconnect_max_s": (0.1, 300),
    "order_deadline_s": (0, MAX_DEADLINE_S),    # 0: no deadline
    "commit_delay_ms": (0, 60 * 1000),
    "dlq_max_entries": (1, 10 ** 9),
    "retention_s": (1, 3650 * DAY_S),           # seconds are for tests; production wants days
    "heartbeat_every_s": (0.05, 60),
    "metrics_port": (0, 65535),                 # 0: no metrics
    "wait_replicas": (0, 16),
    "wait_timeout_ms": (1, 60 * 1000),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def plain_number(number: float) -> str:
    """315360000 rather than 3.1536e+08; 1e+300, nan and inf as themselves; no 4,000 digits."""
    if isinstance(number, int) or (math.isfinite(number) and number.is_integer() and abs(number) < 1e15):
        text = str(int(number))
        return text if len(text) <= 20 else f"{number:.6g}"
    return str(number)


def _coerce(name: str, raw: str, default):
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    return raw
