"""The loggers choreo's processes write to, named once. Library code only gets loggers and logs
records on them; the `choreo` command configures logging once (choreo.logs), as any other host
application may instead.

Every record may carry, beyond its message:
    service, consumer   who logged it (a worker binds its own; see bound())
    context             key=value fields shown after the message in plain format, and as fields of
                        the JSON object: event_id, order_id, stream, entry_id, deliveries, ms, ...
    data                fields for JSON only: the plain message already says them in words
"""

from __future__ import annotations

import logging

WORKER = "choreo.worker"    # start/stop, retries, dead letters, reconnects, housekeeping
EVENTS = "choreo.events"    # one INFO line per handled entry: turned down without losing the above
TIMERS = "choreo.timers"    # the timers process
TRIMMER = "choreo.trimmer"  # `choreo trim --every`
EXPORTER = "choreo.exporter"  # `choreo exporter`: its start line, and scrapes that cannot read Redis
CLI = "choreo.cli"          # the command's own error and warning lines


class Bound(logging.LoggerAdapter):
    """A logger that stamps service and consumer on every record, keeping a call's own `extra`
    (the standard adapter would replace it)."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


def bound(name: str, service: str, consumer: str) -> Bound:
    return Bound(logging.getLogger(name), {"service": service, "consumer": consumer})
