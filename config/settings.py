"""Runtime settings: one frozen dataclass, read from the environment once and passed around."""

from __future__ import annotations

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
    # Entries read per stream per XREADGROUP call; the batch is committed in one round trip.
    batch_size: int = 50
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
    # "plain" or "json".
    log_format: str = "plain"
    # An order not completed this long after it was placed is cancelled (unless already shipped).
    # Armed as an rq job by the order service; 0 places orders without a deadline.
    order_deadline_s: float = 300.0
    # Fault injection for tests and chaos runs: sleep this long between handling a batch and
    # committing it, widening the window in which a SIGKILL leaves entries pending.
    commit_delay_ms: int = 0
    # Dead letters kept per service: writing one trims dlq:<service> to its newest this many.
    dlq_max_entries: int = 10_000

    @property
    def url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, service: str | None = None,
                 **overrides) -> "Settings":
        """CHOREO_<FIELD> for everyone; for a worker of `service`, CHOREO_<FIELD>_<SERVICE> wins
        (e.g. CHOREO_MAX_DELIVERIES_PAYMENT=10); explicit overrides (CLI flags) win over both."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            base = "REDIS_URL" if f.name == "redis_url" else "CHOREO_" + f.name.upper()
            names = [base] + ([f"{base}_{service.upper()}"] if service and f.name != "redis_url" else [])
            for name in names:
                raw = env.get(name)
                if raw:
                    values[f.name] = _coerce(name, raw, f.default)
        settings = cls(**values)
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.batch_size <= 1000:
            raise SettingsError(f"batch size must be 1..1000, got {self.batch_size}")
        if not 1 <= self.block_ms <= 1000:
            raise SettingsError(f"block_ms must be 1..1000, got {self.block_ms}")
        if not 1 <= self.retry_base_ms <= self.retry_max_ms:
            raise SettingsError("retry_base_ms must be >= 1 and <= retry_max_ms")
        if self.max_deliveries < 1:
            raise SettingsError(f"max_deliveries must be >= 1, got {self.max_deliveries}")
        if self.log_format not in ("plain", "json"):
            raise SettingsError(f"log format must be plain or json, got {self.log_format!r}")


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
