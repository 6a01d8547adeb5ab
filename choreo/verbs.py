"""The `choreo` verbs: each a short function of (args, settings) returning an exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from choreo.bus import inspect, keys as bus_keys, layout
from choreo.bus.connect import how_to_start, open_bus, redact
from choreo.logs import name_process
from choreo.plain import plain
from choreo.config.settings import Settings, SettingsError
from choreo.arguments import consumer_problem
from choreo.orders import status_changes
from choreo.workers import keys
from choreo.workers.logs import EXPORTER, TIMERS, TRIMMER, WORKER, bound


def _out(line: str = "") -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Lines that carry values read from Redis (order fields, reasons, dead letters, log context) go
# out through these: a control character in them is shown escaped, never acted on by the terminal.
def _show(line: str) -> None:
    _out(plain(line))


def _show_err(line: str) -> None:
    _err(plain(line))


def cmd_demo(args, settings: Settings) -> int:
    from choreo.demo import run_demo
    from choreo.scenarios import HAPPY, SCENARIOS
    # Without --scenario: the tutorial's eight lines and its short summary, exactly.
    scenario = SCENARIOS[args.scenario or HAPPY]
    with open_bus(args.redis_url or settings.redis_url) as bus:     # None: the embedded store
        return run_demo(bus, settings, out=_show, scenario=scenario,
                        full_state=args.scenario is not None)


def _stop_flag() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())       # only a flag: the loop finishes its batch
    return stop


def cmd_worker(args, settings: Settings) -> int:
    from choreo.bus.acl import require
    from choreo.ops.acl import arms_timers, service_role
    from choreo.workers.observer import NO_OBSERVER, combined
    from choreo.scheduling.timers import RqTimers
    from choreo.workers.runtime import Worker, consumer_name, tune_gc
    from choreo.workers.tracing import tracing_for
    service = args.app.service(args.service)
    partitions = served_partitions(args.partitions)
    from choreo.bus.layout import cluster_url
    # The saga with CHOREO_ORDER_DEADLINE_S=0 arms none (an order placed with one anyway: arming
    # fails, the worker backs off saying why, the entry stays pending).
    arms = args.app.timer_jobs and not (args.app.orders and settings.order_deadline_s == 0)
    if cluster_url(settings.url) and not settings.timers_url and arms:
        raise SettingsError("a worker on Redis Cluster arms its timers with rq, which needs a plain "
                            "Redis: set CHOREO_TIMERS_URL, or CHOREO_ORDER_DEADLINE_S=0 to arm "
                            "none (docs/cluster.md)")
    consumer = args.consumer or consumer_name(service.name)
    problem = consumer_problem(consumer)    # made of CHOREO_SLOT (or honcho's name) and the host name
    if problem:
        raise SettingsError(f"{problem}: {consumer[:80]!r} (from CHOREO_SLOT, "
                            f"HONCHO_PROCESS_NAME and the host name; or give --consumer)")
    name_process(service.name, consumer)
    log = bound(WORKER, service.name, consumer)
    observer = combined(_worker_observer(service, consumer, settings, log),  # before Redis: fail fast
                        tracing_for(service.name, settings.tracing, os.environ) or NO_OBSERVER)
    stop = _stop_flag()
    bus = _open_waiting(settings, stop, log, service.voice)     # the loop retries until Redis answers
    if bus is None:
        return 0                        # stopped while waiting for Redis Cluster
    try:
        timers = RqTimers(bus, settings.timers_url)     # a URL redis-py cannot use: refused now
    except BaseException:
        bus.close()
        raise
    log.info(f"{service.voice}: {consumer} on {redact(settings.url)}{_serving(partitions)}"
             + (f" (timers on {redact(settings.timers_url)})"     # only a worker that arms any
                if settings.timers_url and arms and arms_timers(service, args.app.timer_events) else "")
             + f", consuming {', '.join(service.consumes)}; emits {', '.join(service.emits) or 'nothing'}")
    role = service_role(service, timer_events=args.app.timer_events)
    worker = Worker(service, bus, settings, consumer,
                    check=lambda: (require(bus, role), bus.agree_layout(),
                                   arms and arms_timers(service, args.app.timer_events) and timers.check()),
                    publishers=args.app.publishers, consumers=args.app.consumers,
                    events=args.app.events, observer=observer,
                    timers=timers, partitions=partitions, unreachable_hint=how_to_start(settings.url))
    tune_gc()
    try:
        return worker.run(stop)
    finally:
        worker.heartbeat.end()          # also when run() raised: the key goes now, not a TTL later
        timers.close()
        bus.close()
        log.info(f"{service.voice}: {consumer} stopped")


def _open_waiting(settings: Settings, stop: threading.Event, log, voice: str):
    """The worker's bus. A plain client connects at its first command (the worker loop waits for
    Redis); a cluster client asks the node named for the slot map as it is made, so while that
    node does not answer the worker waits here, as for a plain server, retrying with backoff
    until it does or the worker is stopped (None)."""
    from choreo.bus.contract import BusUnavailable, reconnect_delay_s
    failures = 0
    while True:
        try:
            return open_bus(settings.url, check=False, **durable(settings))
        except BusUnavailable as exc:
            failures += 1
            delay = reconnect_delay_s(failures, settings.reconnect_max_s)
            log.warning(f"{voice}: {exc}; retry {failures} in {delay:.1f}s (a worker waits; the URL "
                        f"may name any node of the cluster that answers)")
            if stop.wait(delay):
                return None


def durable(settings: Settings) -> dict:
    """What a writer's bus waits for after each commit (CHOREO_WAIT_REPLICAS)."""
    return {"wait_replicas": settings.wait_replicas, "wait_timeout_ms": settings.wait_timeout_ms}


def served_partitions(chosen: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """--partitions, checked against CHOREO_PARTITIONS (None: all)."""
    from choreo.bus import layout
    count = layout.current().partitions
    beyond = [p for p in chosen or () if p >= count]
    if beyond:
        raise SettingsError(f"worker --partitions: there is no partition {beyond[0]}: "
                            f"CHOREO_PARTITIONS={count} gives 0..{count - 1}")
    return chosen


def ranges(numbers: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) as `0-2,5`."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def _serving(partitions: tuple[int, ...] | None) -> str:
    from choreo.bus import layout
    count = layout.current().partitions
    if count == 1:
        return ""
    shown = ranges(partitions) if partitions else f"0-{count - 1}"
    return f" (partitions {shown} of {count})"


def _worker_observer(service, consumer: str, settings: Settings, log):
    """The worker's metrics hooks, /metrics already served; the no-op ones when metrics are off."""
    from choreo.workers.observer import NO_OBSERVER
    if not settings.metrics_port:
        return NO_OBSERVER
    from choreo.ops.metrics import worker_observer
    observer = worker_observer(service.name, consumer, service.streams, settings.metrics_port,
                               settings.metrics_addr)
    log.info(f"{service.voice}: metrics on http://{settings.metrics_addr}:{settings.metrics_port}/metrics")
    return observer


def _deadline(args, settings: Settings) -> float:
    return settings.order_deadline_s if args.deadline is None else args.deadline


def cmd_timers(args, settings: Settings) -> int:
    """The rq worker that fires the app's timers (the saga's order deadlines) when due. rq's queue
    is on CHOREO_TIMERS_URL's server when set (jobs still publish on REDIS_URL's), else on
    REDIS_URL's; the heartbeat is on REDIS_URL's, where health and the dashboard read it."""
    from choreo.bus.connect import open_raw
    from choreo.bus.heartbeat import Heartbeat
    from choreo.scheduling.timers import run_timers
    from choreo.bus.acl import require
    from choreo.ops.acl import roles
    if args.rearm:
        return rearm_deadlines(args, settings)
    if args.deadline is not None:
        raise SettingsError("--deadline goes with --rearm")
    name = timers_name()
    name_process("timers", name)        # rq's lines and the sweeper's carry no consumer of their own
    log = bound(TIMERS, "timers", name)
    with contextlib.ExitStack() as opened:         # either unreachable: one line, nothing started
        bus = opened.enter_context(open_bus(settings.url, **durable(settings)))
        if bus.cluster and not settings.timers_url:
            from choreo.scheduling.timers import NOT_ON_A_CLUSTER
            raise SettingsError(NOT_ON_A_CLUSTER)
        rq_connection = None
        if settings.timers_url:
            rq_connection = opened.enter_context(open_raw(settings.timers_url, variable="CHOREO_TIMERS_URL"))
            log.info(f"timers: rq worker on {redact(settings.timers_url)}, publishing on "
                     f"{redact(settings.url)} (timers of {args.app.name}, JSON serializer)")
        else:
            log.info(f"timers: rq worker on {redact(settings.url)} (timers of {args.app.name}, JSON serializer)")
        try:
            # The whole role is checked on REDIS_URL's server, rq's keys included (docs/operations.md).
            require(bus, next(r for r in roles(list(args.app.services), args.app.timer_events) if r.user == "timers"))
            bus.agree_layout()
            run_timers(bus, name, args.app.timer_jobs, level=settings.log_level,
                       heartbeat=Heartbeat(bus, "timers", name, settings.heartbeat_every_s),
                       rq_connection=rq_connection, retention_s=int(settings.retention_s))
            return 0
        finally:
            log.info(f"timers: {name} stopped")


def rearm_deadlines(args, settings: Settings) -> int:
    """`choreo timers --rearm`: the saga's deadlines armed again, on rq's server (CHOREO_TIMERS_URL
    or REDIS_URL's), from the PENDING orders' records on REDIS_URL's (workers.deadlines.rearm)."""
    from choreo.scheduling.timers import RqTimers
    from choreo.workers import deadlines
    if deadlines.JOB not in args.app.timer_jobs:
        raise SettingsError(f"--rearm arms the order saga's deadlines; {args.app.name} has none")
    with open_bus(settings.url, **durable(settings)) as bus:
        if bus.cluster and not settings.timers_url:
            from choreo.scheduling.timers import NOT_ON_A_CLUSTER
            raise SettingsError(NOT_ON_A_CLUSTER)
        bus.agree_layout()
        timers = RqTimers(bus, settings.timers_url)
        try:
            print(f"timers: {deadlines.rearm(bus, timers, args.deadline)}")
        finally:
            timers.close()
    return 0


def timers_name() -> str:
    import socket
    return f"timers-{socket.gethostname()}-{os.getpid()}"


def cmd_place_order(args, settings: Settings) -> int:
    from choreo.bus.acl import require_wait
    from choreo.orders import OrderRequest, new_order_ids, place_orders
    from choreo.workers.tracing import tracing_for
    tracing = tracing_for("order", settings.tracing, os.environ)
    with open_bus(settings.url, **durable(settings)) as bus:
        bus.agree_layout()
        require_wait(bus, "place-order")
        order_id = args.order_id or new_order_ids(bus, 1)[0]
        place_orders(bus, [OrderRequest(order_id, [{"product_id": args.product,
                                                     "quantity": args.quantity}])],
                     deadline_s=_deadline(args, settings), tracing=tracing,
                     given_ids=bool(args.order_id))
        _out(order_id)
        return 0


def _not_found(order_id: str, settings: Settings, orders: bool = True) -> str:
    """One line for an order Redis no longer (or never) had: after the retention window an
    ended order's keys are gone, and this is what a user asking about it sees. Another app's
    instances: no event traced (trace:<id>, its services' records) and no dead letter."""
    if not orders:
        return f"instance {order_id}: not found (no events traced, no dead letters)"
    return (f"order {order_id}: not found — orders are kept CHOREO_RETENTION_S "
            f"({settings.retention_s} s) after they end; this one may have expired")


def cmd_status(args, settings: Settings) -> int:
    from choreo.workers.unit_of_work import record_fields
    with open_bus(settings.url) as bus:
        oid = args.order_id
        order, reservation, payment, shipment = bus.read_hashes(
            [keys.order(oid), keys.reservation(oid), keys.payment(oid), keys.shipment(oid)])
        if not order:
            _show(_not_found(oid, settings))
            return 1
        # .get: the hash is whatever a writer left there, not necessarily what the order service wrote
        _show(f"order {oid}: {order.get('status', '?')}"
              + (f" ({order['reason']})" if order.get("reason") else ""))
        _show(f"  total_cents={order.get('total_cents', '?')} lines={order.get('lines', '?')}")
        for name, h in (("reservation", reservation), ("payment", payment), ("shipment", shipment)):
            shown = " ".join(f"{k}={v}" for k, v in record_fields(h).items()) or "-"
            _show(f"  {name}: {shown}")
        for item in status_changes(order) or inspect.list_items(bus, keys.order_history(oid)):
            _show(f"  history: {item}")
        return 0



def cmd_trace(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.ops.trace import build_trace, load_trace, order_dead_letters, render_tree, trace_json
    with open_bus(settings.url) as bus:
        events, trimmed = load_trace(bus, args.order_id, args.app.by_name.values())
        dead = order_dead_letters(bus, args.order_id, args.app.by_name)
        order = bus.read_hashes([keys.order(args.order_id)])[0] if args.app.orders else {}
        # Events trimmed from their streams are still an order's while its record lives; once it
        # has expired, what the other services' records (which may outlive it) list is not shown.
        if args.app.orders and not order:
            trimmed = []
        if not events and not dead and not trimmed:
            _show(_not_found(args.order_id, settings, args.app.orders))
            return 1
        status = order.get("status", "")
        nodes = build_trace(bus, events, dead, args.app.by_name)
        if args.json:
            _out(trace_json(args.order_id, status, nodes, dead, events, args.app.by_name, trimmed))
        else:
            # A pipe gets whole lines (grep-able), not lines cut at rich's default 80 columns.
            wide = sys.stdout.isatty() or "COLUMNS" in os.environ
            noun = 'order' if args.app.orders else 'instance'
            Console(width=None if wide else 400).print(
                render_tree(args.order_id, status, nodes, dead, noun, trimmed))
        return 0


def cmd_load(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.bus.acl import require_wait
    from choreo.measure.load import LoadPlan, rich_progress, run_load, summary_table
    plan = LoadPlan(args.orders, args.timeout, args.product, args.quantity, rate=args.rate,
                    deadline_s=_deadline(args, settings))
    with open_bus(settings.url, **durable(settings)) as bus:
        bus.agree_layout()
        require_wait(bus, "load")
        with rich_progress(args.orders) as progress:
            result = run_load(bus, plan, progress=progress, reconnect_max_s=settings.reconnect_max_s)
        # The table goes to stderr, before the figures: scripts read stdout's last line.
        Console(stderr=True).print(summary_table(result))
        if result.gave_up:
            _err(result.gave_up)
        _out(result.figures())
        return 0 if result.finished == args.orders else 1


def cmd_dashboard(args, settings: Settings) -> int:
    from rich.console import Console
    from choreo.ops.dashboard import print_once, run_live, sample_twice
    if args.once or args.json:
        with open_bus(settings.url) as bus:
            snapshot = sample_twice(bus, settings.url, args.refresh, args.app.by_name, args.app.orders)
            if args.json:
                _out(snapshot.to_json())
            else:
                # A pipe has no width of its own; 80 columns would squeeze the groups table.
                wide = sys.stdout.isatty() or "COLUMNS" in os.environ
                print_once(snapshot, Console(width=None if wide else 160))
            return 0
    if not sys.stdout.isatty():     # a full-screen view written to a file or a pipe shows nothing
        _err("choreo dashboard: the live view needs a terminal; add --once or --json for a file or a pipe")
        return 2
    bus = open_bus(settings.url, check=False)     # the live view shows "disconnected" and retries
    try:
        _refuse_another_layout(bus)
        return run_live(bus, settings.url, args.refresh, Console(), args.app.by_name, args.app.orders)
    except KeyboardInterrupt:
        return 0                                  # Ctrl-C is how one leaves a live view
    finally:
        bus.close()


EXPORTER_PORT = 9464


def _refuse_another_layout(bus) -> None:
    """LayoutError (exit 2) if the deployment records another CHOREO_PARTITIONS, when Redis
    answers now; a process started while it does not checks at each read (snapshot.gather)."""
    from choreo.bus.contract import BusUnavailable
    try:
        bus.check_layout()
    except BusUnavailable:
        pass


def cmd_exporter(args, settings: Settings) -> int:
    """Serve the fleet view on /metrics until SIGTERM; each scrape reads Redis afresh."""
    from choreo.ops.exporter import serve_exporter
    log = logging.getLogger(EXPORTER)
    stop = _stop_flag()
    bus = open_bus(settings.url, check=False)     # while Redis is down, scrapes say choreo_redis_up 0
    try:
        _refuse_another_layout(bus)
        serve_exporter(bus, settings.url, args.port, args.addr, on_error=log.warning, app=args.app)
        log.info(f"exporter: fleet metrics of {redact(settings.url)} on "
                 f"http://{args.addr}:{args.port}/metrics")
        stop.wait()
        return 0
    finally:
        bus.close()


def cmd_topology(args, settings: Settings) -> int:
    """The choreography map, from the declarations the workers run on."""
    from choreo.topology import render
    _out(render(args.app.by_name, args.format))
    return 0


def cmd_schema(args, settings: Settings) -> int:
    """Each event type's data as JSON Schema, or the streams and messages as AsyncAPI."""
    import json
    from importlib.metadata import version
    from choreo.workers.events import asyncapi, json_schema
    app = args.app
    doc = (asyncapi(app.by_name, app.name, version("choreo"), app.events) if args.format == "asyncapi"
           else json_schema(app.events))
    _out(json.dumps(doc, indent=2))
    return 0


def cmd_health(args, settings: Settings) -> int:
    from choreo.bus.contract import BusError
    from choreo.ops.health import Health, check
    streams = list(args.app.by_name[args.service].streams) if args.service in args.app.by_name else []
    try:
        with open_bus(settings.url) as bus:
            verdict = check(bus, args.service, streams, args.max_silence, args.max_pending_age)
    except BusError as exc:
        if args.json:       # a machine reading stdout gets a verdict too; stderr's line as ever
            _out(Health(args.service, False, str(exc), args.max_silence, args.max_pending_age).to_json())
        raise
    if args.json:
        _out(verdict.to_json())
    else:
        _show(verdict.line())           # consumer names and states come from Redis
    return 0 if verdict.healthy else 1


def cmd_dlq(args, settings: Settings) -> int:
    from choreo.ops import dlq
    services = args.app.by_name
    if args.dlq_verb == "show" and dlq.parse_ref(args.entry)[0] not in ("", *services):
        _err(f"choreo dlq show: unknown service in {args.entry!r} (one of {', '.join(services)})")
        return 2
    bus = open_bus(settings.url)
    try:
        if args.dlq_verb == "list":
            return dlq.list_cmd(bus, [args.service] if args.service else list(services), _show)
        if args.dlq_verb == "show":
            return dlq.show_cmd(bus, args.entry, list(services), _show)
        if args.dlq_verb == "replay":
            # The limits the service's own workers apply (CHOREO_MAX_ENTRY_BYTES_<SERVICE>).
            limits = Settings.from_env(service=args.service, redis_url=args.redis_url)
            return dlq.replay_cmd(bus, services[args.service], limits.max_entry_bytes,
                                  None if args.all else args.id, args.dry_run, _show, _show_err,
                                  trust_copy=args.trust_copy, app=args.app)
        return dlq.purge_cmd(bus, args.service, args.yes, _show, _show_err)
    except dlq.DeadLetterError as exc:
        _show_err(f"choreo: {exc}")
        return 1
    finally:
        bus.close()


def cmd_audit(args, settings: Settings) -> int:
    from choreo.ops.audit import run_audit
    with open_bus(settings.url) as bus:
        return run_audit(bus, args.app.services, args.strict, _show, _show_err,
                         settings.retention_s, args.app)


def cmd_trim(args, settings: Settings) -> int:
    from choreo.bus.trim import Retention, trim_streams
    with open_bus(settings.url) as bus:
        if args.every is None:
            retention = Retention(keep_entries=args.keep_entries or 0, keep_seconds=args.keep_seconds or 0)
            for report in trim_streams(bus, args.app.services, retention, dry_run=args.dry_run):
                _out(report.line())
            if not args.dry_run and args.app.orders:       # the saga's orders:index
                _out(_pruned_line(_prune_orders(bus, settings), settings))
            return 0
        # Given on the command line, even 0 (keep none), it wins over CHOREO_TRIM_KEEP_*.
        retention = Retention(settings.trim_keep_entries if args.keep_entries is None else args.keep_entries,
                              settings.trim_keep_seconds if args.keep_seconds is None else args.keep_seconds)
        return _trim_every(bus, retention, args.every, _stop_flag(), settings, args.app)


def _prune_orders(bus, settings: Settings) -> int:
    """orders:index loses the ids of orders whose keys have expired (docs/keys.md, "Retention"):
    each partition's index with its own counter, since the prune script keeps to one partition."""
    from choreo.bus.trim import Index, prune_index
    return sum(prune_index(bus, Index(keys.orders_index(p), keys.orders_expired(p), keys.order),
                           settings.retention_s) for p in layout.current().all())


def _pruned_line(pruned: int, settings: Settings) -> str:
    return (f"{bus_keys.any_partition(keys.orders_index())}: pruned {pruned} expired orders "
            f"(orders are kept {settings.retention_s} s after they end)")


def _trim_every(bus, retention, every_s: float, stop: threading.Event, settings: Settings,
                app) -> int:
    """The trimmer process: trim, wait, repeat until SIGTERM. A stream is logged only when
    something was trimmed or its blocked state changed; a failure is logged and retried."""
    from choreo.bus.contract import BusError
    from choreo.bus.trim import trim_streams
    log = logging.getLogger(TRIMMER)
    log.info(f"trimmer: every {every_s:g}s, keeping {retention.keep_entries} entries / "
             f"{retention.keep_seconds:g}s of acknowledged history")
    blocked: dict[str, tuple] = {}
    while True:
        try:
            for report in trim_streams(bus, app.services, retention):
                if report.trimmed or blocked.get(report.stream, ()) != report.blocked_by:
                    log.info(f"trimmer: {report.line()}")
                blocked[report.stream] = report.blocked_by
            pruned = _prune_orders(bus, settings) if app.orders else 0
            if pruned:
                log.info(f"trimmer: {_pruned_line(pruned, settings)}")
        except BusError as exc:
            log.warning(f"trimmer: trimming failed, will retry: {exc}")
        if stop.wait(every_s):
            log.info("trimmer: stopped")
            return 0


def cmd_acl(args, settings: Settings) -> int:
    from choreo.bus.acl import check, render
    from choreo.ops.acl import passwords, roles
    every = roles(list(args.app.services), args.app.timer_events)
    if args.acl_verb == "render":
        try:
            secret = passwords([r.user for r in every], file=args.password_file)
        except (OSError, ValueError) as exc:
            _err(f"choreo acl render: {exc}")
            return 2
        sys.stdout.write(render(every, secret))
        return 0
    with open_bus(settings.url) as bus:
        verdicts = check(bus, every)
    from rich.console import Console
    from choreo.ops.acl import verdict_table
    Console(width=None if sys.stdout.isatty() else 160).print(verdict_table(verdicts))
    wrong = [v for v in verdicts if not v.ok]
    _out(f"{len(verdicts)} checks, {len(wrong)} mismatches" + (": " + "; ".join(
        f"{v.user} {' '.join(v.command)} should be {'allowed' if v.expected else 'refused'}"
        for v in wrong[:5]) if wrong else ""))
    return 1 if wrong else 0


def _bench_misuse(args) -> str:
    """Flags that belong to the other mode of `choreo bench`, or that the rows asked for cannot
    use (--partitions without a cluster row, --redis-url with one): named, rather than ignored."""
    from choreo.measure.bench import CLUSTER_ROWS
    if args.soak:
        wrong = [f for f, v in (("--rows", args.rows), ("--curve", args.curve),
                                ("--partitions", args.partitions), ("--repeat", args.repeat > 1)) if v]
        return f"{' and '.join(wrong)}: not with --soak" if wrong else ""
    wrong = [f for f, v in (("--retention", args.retention), ("--seen-ttl", args.seen_ttl)) if v]
    if wrong:
        return f"{' and '.join(wrong)}: only with --soak"
    clustered = [r for r in args.rows or () if r in CLUSTER_ROWS]
    if args.partitions and not clustered:
        return f"--partitions: only with a cluster row ({', '.join(CLUSTER_ROWS)})"
    if args.redis_url and clustered:
        return f"--redis-url: not with {clustered[0]}, which starts a throwaway cluster of its own"
    return ""


def cmd_bench(args, settings: Settings) -> int:
    from choreo.measure.bench import BenchError
    from choreo.measure.lifeline import interrupts_kept
    if misuse := _bench_misuse(args):
        _err(f"choreo bench: {misuse}")
        return 2
    # SIGTERM as Ctrl-C, neither lost in a finalizer: unwind through the finally blocks that stop
    # every process started.
    try:
        with interrupts_kept():
            return _soak(args) if args.soak else _bench(args)
    except BenchError as exc:
        _err(f"choreo bench: {exc}")
        return 1


def _bench(args) -> int:
    from choreo.measure.bench import DEFAULT_ROWS, PARTITIONS, Plan, run_bench
    from choreo.measure.bench_report import render, to_json
    plan = Plan(args.orders, args.rows or DEFAULT_ROWS, args.replicas, rate=args.rate,
                timeout_s=args.timeout, curve=args.curve, partitions=args.partitions or PARTITIONS,
                repeat=args.repeat)
    run = run_bench(plan, args.redis_url)
    _print_run(run, args.json, render, to_json)
    return 0 if all(r.completed == r.orders for rows in run.rounds for r in rows) else 1


def _soak(args) -> int:
    from choreo.measure.soak import SoakPlan, run_soak
    from choreo.measure.soak_report import lines, sample_table, to_json
    plan = SoakPlan(args.soak, args.rate, args.retention or 30, args.seen_ttl or 60,
                    timeout_s=args.timeout, replicas=args.replicas)
    run = run_soak(plan, args.redis_url)
    _print_run(run, args.json, sample_table, to_json)
    if not args.json:
        for line in lines(run):
            _show(line)             # the audit's line carries what Redis held
    return 0 if run.completed == plan.orders and run.audit_clean else 1


def _print_run(run, as_json: bool, render, to_json) -> None:
    if as_json:
        _out(to_json(run))
        return
    from rich.console import Console
    # A pipe has no width of its own; rich's 80 columns would wrap the tables.
    Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140).print(render(run))
