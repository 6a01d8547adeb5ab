"""Trace context (the optional extra `choreo[tracing]`, OpenTelemetry): one order's events form one
distributed trace across the services.

- Placing an order starts the trace: a span `order place OrderCreated`, whose W3C `traceparent`
  the OrderCreated event carries (bus.envelope).
- Each handling is a span `<service> handle <EventType>`, child of the incoming event's
  traceparent, with attributes order id, event id, stream, entry id and deliveries; the commit is
  its child span `<service> commit` (one round trip, shared by the batch: each entry's commit span
  has the batch's start and end). Events the handler emits carry the handling span's traceparent.
- On only when asked (CHOREO_TRACING=1): otherwise nothing here is imported, and events carry no
  traceparent field at all. A malformed traceparent on an entry is ignored (the handling starts a
  new trace), never a reason to dead-letter.

This is an Observer (workers.observer): the runtime's hooks open, end and link the spans.
"""

from __future__ import annotations

import sys
from typing import Mapping

from choreo.workers.observer import DEAD_LETTERED, REFUSED, Observer

INSTALL = "pip install 'choreo[tracing]'"


class TracingUnavailable(Exception):
    """Tracing was asked for but OpenTelemetry (or the chosen span exporter) is not installed."""


def _otel():
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise TracingUnavailable(f"tracing needs OpenTelemetry: {INSTALL}") from None
    return context, trace, TraceContextTextMapPropagator()


class Tracing(Observer):
    """Spans for one service (or the order placer), from a TracerProvider (tests pass their own)."""

    def __init__(self, service: str, tracer_provider=None):
        self._context, self._trace, self._propagator = _otel()
        provider = tracer_provider or self._trace.get_tracer_provider()
        self.tracer = provider.get_tracer("choreo")
        self.service = service
        self._open: dict[tuple[str, str], object] = {}     # (stream, entry id) -> its handling span

    def traceparent(self, span) -> str:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent", "")

    def _parent(self, traceparent: str):
        """The context of the event's producer span; an empty one (a new trace) without it."""
        if not traceparent:
            return self._context.Context()
        return self._propagator.extract({"traceparent": traceparent}, context=self._context.Context())

    # -- the order placer: the root of an order's trace ------------------------------------------
    def placing(self, order_id: str) -> tuple[object, str]:
        span = self.tracer.start_span("order place OrderCreated", kind=self._trace.SpanKind.PRODUCER,
                                      attributes={"choreo.order_id": order_id})
        return span, self.traceparent(span)

    def placed(self, span, ok: bool, why: str = "") -> None:
        if not ok:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, why))
        span.end()

    # -- the worker's hooks -----------------------------------------------------------------------
    def handling(self, d, event) -> str:
        key = (d.stream, d.entry_id)
        if key in self._open:           # handled again in the same batch (split after a refusal)
            self._end(self._open.pop(key), "abandoned", error="handled again")
        span = self.tracer.start_span(
            f"{self.service} handle {event.type}", context=self._parent(event.traceparent),
            kind=self._trace.SpanKind.CONSUMER,
            attributes={"choreo.order_id": event.order_id, "choreo.event_id": event.id,
                        "choreo.stream": d.stream, "choreo.entry_id": d.entry_id,
                        "choreo.deliveries": d.deliveries})
        self._open[key] = span
        return self.traceparent(span)

    def handler_failed(self, d, error: str) -> None:
        span = self._open.pop((d.stream, d.entry_id), None)
        if span is not None:
            self._end(span, "retry", error=error)

    def committed(self, deliveries, seconds: float) -> None:
        import time
        ended = time.time_ns()
        began = ended - int(seconds * 1e9)
        for d in deliveries:
            parent = self._open.get((d.stream, d.entry_id))
            if parent is not None:
                child = self.tracer.start_span(
                    f"{self.service} commit", context=self._trace.set_span_in_context(parent),
                    start_time=began, attributes={"choreo.batch_entries": len(deliveries)})
                child.end(end_time=ended)

    def finished(self, d, outcome: str) -> None:
        span = self._open.pop((d.stream, d.entry_id), None)
        if span is not None:
            failed = outcome in (DEAD_LETTERED, REFUSED)
            self._end(span, outcome, error=outcome if failed else "")

    def reconnecting(self, failures: int) -> None:
        """The batch in hand was lost with Redis: its spans end, marked so."""
        for span in self._open.values():
            self._end(span, "abandoned", error="lost Redis before the commit")
        self._open.clear()

    def _end(self, span, outcome: str, error: str = "") -> None:
        span.set_attribute("choreo.outcome", outcome)
        if error:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()


def tracer_provider(service: str, env: Mapping[str, str]):
    """The process's TracerProvider: the one already configured (e.g. by opentelemetry-instrument),
    else an SDK provider named choreo-<service> exporting as OTEL_TRACES_EXPORTER says: `otlp`
    (default; needs opentelemetry-exporter-otlp), `console`, or `none`."""
    _otel()
    from opentelemetry import trace
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise TracingUnavailable(f"tracing needs the OpenTelemetry SDK: {INSTALL}") from None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": f"choreo-{service}"}))
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    if kind == "console":
        # stderr: stdout is the command's answer (`id=$(choreo place-order …)`), never spans
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif kind == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    elif kind != "none":
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER={kind!r}: choreo knows otlp, console, none")
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter():
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable("OTEL_TRACES_EXPORTER=otlp needs pip install "
                                     "opentelemetry-exporter-otlp (or set it to console or none)") from None
    return OTLPSpanExporter()


def tracing_for(service: str, enabled: bool, env: Mapping[str, str]) -> Observer | None:
    """A Tracing for the process when enabled (CHOREO_TRACING=1), else None; nothing imported."""
    if not enabled:
        return None
    return Tracing(service, tracer_provider(service, env))
