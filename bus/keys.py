"""Every Redis key name the bus uses, spelled once. Users read these with redis-cli."""

STREAM_PREFIX = "events:"
DLQ_PREFIX = "dlq:"


def stream(event_type: str) -> str:
    """The stream carrying one event type: events:<EventType>."""
    return STREAM_PREFIX + event_type


def event_type_of(stream_key: str) -> str:
    return stream_key[len(STREAM_PREFIX):] if stream_key.startswith(STREAM_PREFIX) else ""


def dead_letters(group: str) -> str:
    """A service's dead-letter stream: dlq:<service>."""
    return DLQ_PREFIX + group


def seen(group: str) -> str:
    """Dedup ids: a sorted set of the event ids <group> committed, each scored by the epoch second
    after which it may be forgotten (bus/commit.lua)."""
    return f"seen:{group}"


def trace(order_id: str) -> str:
    """List of "<stream> <entry-id>" for every event published about one order, in commit order."""
    return f"trace:{order_id}"


def heartbeat(service: str, consumer: str) -> str:
    """A live process's hash (service, consumer, host, pid, version, state, ...), with a TTL of a
    few renewal periods: it exists only while the process keeps renewing it (bus.heartbeat)."""
    return f"heartbeat:{service}:{consumer}"


def heartbeats(service: str) -> str:
    """Sorted set of the consumer names that renewed a heartbeat of `service` lately, scored by
    the epoch ms of their last renewal: where readers find the heartbeat keys without a SCAN."""
    return f"heartbeats:{service}"
