"""How the `choreo` command writes log lines: one handler on the root logger, set up once per run
(configure), so choreo's loggers (workers.logs) and rq's all come out the same way, on stderr.

plain  what honcho users have always seen: the message, then the record's context as key=value,
       every control character escaped (choreo.plain: entry ids, reasons and errors come from Redis)
json   one object per line: time (ISO 8601 UTC, ms), level, service, consumer, msg, then the
       context fields; json.dumps escapes whatever a hostile writer put in them
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from choreo.plain import plain
from choreo.workers.logs import EVENTS


def _fields(record: logging.LogRecord, name: str) -> dict:
    value = getattr(record, name, None)
    return value if isinstance(value, dict) else {}


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = record.getMessage()
        context = _fields(record, "context")
        if context:
            line += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        if record.exc_info:       # a traceback keeps its lines; each is escaped on its own
            return "\n".join(map(plain, [line, *self.formatException(record.exc_info).split("\n")]))
        return plain(line)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "", consumer: str = ""):
        super().__init__()
        self.service, self.consumer = service, consumer

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc)
        line = {"time": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
                "level": record.levelname,
                "service": getattr(record, "service", self.service),
                "consumer": getattr(record, "consumer", self.consumer),
                "logger": record.name, "msg": record.getMessage()}
        for key, value in {**_fields(record, "context"), **_fields(record, "data")}.items():
            line.setdefault(key, value)         # a context field never hides time, level or msg
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test's capture, a replaced stream),
    never to a stream closed since configure()."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure(fmt: str = "plain", level: str = "INFO", service: str = "", consumer: str = "",
              events: bool = True) -> None:
    """Replace the handler an earlier configure() installed (main() may run many times in one
    process: tests), keeping any other (pytest's capture). service/consumer: the process's own,
    for records that carry none (the CLI's lines, rq's). events=False drops the per-event lines
    (workers.logs.EVENTS) below WARNING from this handler only."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(JsonFormatter(service, consumer) if fmt == "json" else PlainFormatter())
    if not events:
        handler.addFilter(lambda r: r.name != EVENTS or r.levelno >= logging.WARNING)
    root.addHandler(handler)
    root.setLevel(level)


def name_process(service: str, consumer: str) -> None:
    """Stamp `service` and `consumer` on every later line that carries none of its own (rq's, the
    timers' sweeper's, the command's): a process knows its consumer name only once its verb runs,
    after configure()."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Stderr) and isinstance(handler.formatter, JsonFormatter):
            handler.formatter.service, handler.formatter.consumer = service, consumer
