"""The `choreo` command: the argument parser and one error exit. Verbs live in choreo.verbs,
argument types in choreo.arguments. Exit codes: 2 for bad arguments or settings, 1 for an
unreachable or refusing server or a failed run, 0 otherwise."""

from __future__ import annotations

import logging
import dataclasses
import os
import sys

from choreo.bus.connect import UnusableUrl, redact
from choreo.bus.contract import BusError, BusUnavailable
from choreo import arguments as arg
from choreo.arguments import Parser, UsageError
from choreo.ops.metrics import MetricsUnavailable
from choreo.workers.tracing import TracingUnavailable
from choreo.bus import layout
from choreo.bus.layout import LayoutError, cluster_url
from choreo.scenarios import SCENARIOS
from choreo.logs import configure as configure_logging
from choreo.verbs import (EXPORTER_PORT, cmd_acl, cmd_audit, cmd_bench, cmd_dashboard, cmd_demo,
                          cmd_dlq, cmd_exporter, cmd_health, cmd_load, cmd_place_order, cmd_schema,
                          cmd_status, cmd_timers, cmd_topology, cmd_trace, cmd_trim, cmd_worker)
from choreo.bus.heartbeat import version
from choreo.config.settings import LOG_LEVELS, Settings, SettingsError
from choreo.workers.app import DEFAULT as APP_DEFAULT, App, AppError, load_app
from choreo.workers.logs import CLI
from choreo.workers.order import OrderRejected


def _add_dlq_verbs(sub, common, services) -> None:
    p = sub.add_parser("dlq", parents=[common], help="list, show, replay or purge dead letters")
    dsub = p.add_subparsers(dest="dlq_verb", required=True, parser_class=Parser)
    q = dsub.add_parser("list", parents=[common], help="dead letters of one service or all")
    q.set_defaults(role="dashboard")
    q.add_argument("service", nargs="?", choices=services)
    q = dsub.add_parser("show", parents=[common], help="one dead letter in full")
    q.set_defaults(role="dashboard")
    q.add_argument("entry", type=arg.entry_id, help="<service>/<dlq entry id> (with partitions <service>/p<N>/<id>), or the bare id")
    q = dsub.add_parser("replay", parents=[common], help="put dead letters back on their stream")
    q.add_argument("service", choices=services)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=arg.entry_id, help="the dlq entry id to replay (with partitions p<N>/<id>, or the id alone)")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    q.add_argument("--dry-run", action="store_true",
                   help="check and print what would be replayed; write nothing")
    q.add_argument("--trust-copy", action="store_true",
                   help="replay the dead letter's own copy when the original entry was trimmed "
                        "(the copy was written by the service's own user: trust it only if you do)")
    q = dsub.add_parser("purge", parents=[common], help="delete a service's dead letters")
    q.add_argument("service", choices=services)
    q.add_argument("--yes", action="store_true",
                   help="really delete them (without it: print how many, delete nothing, exit 2)")
    p.set_defaults(run=cmd_dlq, role="admin")


def _add_ops_verbs(sub, common, logs, services) -> None:
    p = sub.add_parser("audit", parents=[common], help="check the saga's invariants in Redis")
    p.add_argument("--strict", action="store_true",
                   help="after a drained run: anything still in flight is a violation")
    p.set_defaults(run=cmd_audit, role="dashboard")
    p = sub.add_parser("trim", parents=[logs], help="trim streams as far as every group allows")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    # None: not given (0 keeps none; with --every the settings' defaults apply, an explicit 0 too)
    p.add_argument("--keep-entries", type=arg.keep_entries, default=None,
                   help=f"also keep this many newest entries per stream ({arg.keep_entries.bounds})")
    p.add_argument("--keep-seconds", type=arg.keep_seconds, default=None,
                   help=f"also keep entries younger than this, in seconds ({arg.keep_seconds.bounds})")
    p.add_argument("--every", type=arg.trim_every, metavar="SECONDS",
                   help=f"keep running (until SIGTERM), trimming every SECONDS ({arg.trim_every.bounds}); "
                        "retention then defaults to $CHOREO_TRIM_KEEP_ENTRIES and $CHOREO_TRIM_KEEP_SECONDS")
    p.set_defaults(run=cmd_trim, role="trimmer")
    p = sub.add_parser("health", parents=[common],
                       help="exit 0 if SERVICE is alive and keeping up, else 1, with one line why")
    p.add_argument("service", choices=[*services, "timers"])
    p.add_argument("--max-silence", type=arg.max_silence, default=10.0, metavar="SECONDS",
                   help="a live consumer must have read within this, "
                        f"{arg.max_silence.bounds} (default: 10)")
    p.add_argument("--max-pending-age", type=arg.max_pending_age, default=60.0, metavar="SECONDS",
                   help="the oldest entry pending in the service's groups must be younger, "
                        f"{arg.max_pending_age.bounds} (default: 60)")
    p.add_argument("--json", action="store_true", help="the verdict and its figures as JSON")
    p.set_defaults(run=cmd_health, role="dashboard")
    p = sub.add_parser("acl", parents=[common], help="least-privilege Redis users: render, check")
    asub = p.add_subparsers(dest="acl_verb", required=True, parser_class=Parser)
    q = asub.add_parser("render", parents=[common], help="print an ACL file for redis-server --aclfile")
    q.add_argument("--password-file", help="lines '<user> <password>' (else CHOREO_ACL_PASSWORD_<USER>)")
    asub.add_parser("check", parents=[common],
                    help="ask the server (ACL DRYRUN) whether every user may do what it needs, "
                         "and nothing it must not; exit 1 on a mismatch")
    p.set_defaults(run=cmd_acl, role="admin")


def _add_bench_verb(sub, common) -> None:
    from choreo.measure.bench import CLUSTER_ROWS, DEFAULT_ROWS, PARTITIONS, ROWS
    p = sub.add_parser("bench", parents=[common],
                       help="measure choreo against plain redis-py references, in one run")
    p.add_argument("--orders", type=arg.orders, default=5000, help=f"per row, {arg.orders.bounds} (default: 5000)")
    p.add_argument("--rate", type=arg.rate,
                   help=f"orders per second, {arg.rate.bounds} (default: all placed up front)")
    p.add_argument("--replicas", type=arg.replicas, default={}, metavar="SERVICE=N,...",
                   help=f"worker processes per service, {arg.replica_count.bounds} (default: 1 each)")
    p.add_argument("--rows", type=arg.bench_rows, metavar="ROW,...",
                   help=f"which rows, in order, of {','.join(ROWS)} (default: {','.join(DEFAULT_ROWS)}; "
                        f"{' and '.join(CLUSTER_ROWS)} run on a fresh 3-primary Redis Cluster)")
    p.add_argument("--partitions", type=arg.bench_partitions, metavar="N",
                   help=f"the cluster rows' CHOREO_PARTITIONS, {arg.bench_partitions.bounds} (default: {PARTITIONS})")
    p.add_argument("--repeat", type=arg.bench_repeat, default=1, metavar="N",
                   help=f"rounds, {arg.bench_repeat.bounds}, each running every row in turn: figures "
                        f"are medians of the rounds, ratios the median of each round's (default: 1)")
    p.add_argument("--curve", action="store_true",
                   help="also run every row paced at 25/50/75%% of the slowest row's maximum")
    p.add_argument("--timeout", type=arg.load_timeout, default=120.0, metavar="SECONDS",
                   help=f"give up on a row's orders after this, {arg.load_timeout.bounds} (default: 120)")
    p.add_argument("--soak", type=arg.orders, metavar="N",
                   help="instead: place N orders at a steady --rate (default: 60%% of a measured "
                        "maximum) with short retention, and sample Redis's memory, keys and streams")
    p.add_argument("--retention", type=arg.retention, metavar="SECONDS",
                   help=f"with --soak: CHOREO_RETENTION_S, {arg.retention.bounds} (default: 30)")
    p.add_argument("--seen-ttl", type=arg.seen_ttl, metavar="SECONDS",
                   help=f"with --soak: CHOREO_SEEN_TTL_S, {arg.seen_ttl.bounds} (default: 60)")
    p.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    # --redis-url here means: run on that (empty) database instead of a throwaway redis-server;
    # $REDIS_URL is not used, so a bench never flushes a server by accident.
    p.set_defaults(run=cmd_bench, orders_only=True)


# -- wiring --------------------------------------------------------------------------------------

SERVICE_ROLE = "<service>"          # a worker connects as the user of the service it runs


def role_of(args) -> str | None:
    """Whose credentials a verb uses: REDIS_URL_<ROLE> when set (see docs/security.md), else
    REDIS_URL. None (demo, topology) reads REDIS_URL alone."""
    role = getattr(args, "role", None)
    return args.service if role == SERVICE_ROLE else role


def build_parser(app: App | None = None) -> Parser:
    """The parser for one application's commands: services are choices of its services."""
    app = app or load_app(None)
    services = list(app.by_name)
    common = Parser(add_help=False)
    common.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL or "
                        "redis://localhost:6379/0; the demo runs embedded when neither is set)")
    common.add_argument("--app", metavar="MODULE:ATTRIBUTE",
                        help=f"the application whose services and events to use (default: "
                             f"$CHOREO_APP or {APP_DEFAULT}, the order saga)")
    logs = Parser(add_help=False, parents=[common])          # the long-running processes'
    logs.add_argument("--log-format", choices=("plain", "json"),
                      help="plain: the service's words, then key=value context; json: one object "
                           "per line with time, level, service, consumer, msg and the context "
                           "(default: $CHOREO_LOG_FORMAT or plain)")
    logs.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                      help="WARNING drops the per-event lines, keeping retries, dead letters and "
                           "reconnects (default: $CHOREO_LOG_LEVEL or INFO)")
    parser = Parser(prog="choreo", description="Choreographies over Redis Streams: the order saga, or "
                    "your own with --app.")
    parser.add_argument("--version", action="version", version=f"choreo {version()}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)

    p = sub.add_parser("demo", parents=[common], help="run the tutorial's order 1 end to end")
    p.add_argument("--scenario", choices=list(SCENARIOS),
                   help="an unhappy path to watch, compensations included, and its end state "
                        "(default: the tutorial's happy path)")
    p.set_defaults(run=cmd_demo, orders_only=True)
    p = sub.add_parser("worker", parents=[logs], help="run one service's consumer loop")
    p.add_argument("service", choices=services)
    p.add_argument("--consumer", type=arg.consumer, help="consumer name (default: <service>-<host>-<slot>)")
    p.add_argument("--metrics-port", type=arg.port, metavar="PORT",
                   help="serve Prometheus metrics on http://<host>:PORT/metrics (needs "
                        "choreo[metrics]; default: $CHOREO_METRICS_PORT, or none)")
    p.add_argument("--partitions", type=arg.partition_set, metavar="LIST",
                   help="serve only these partitions, e.g. 0-3 or 0,2,5 (default: all "
                        "$CHOREO_PARTITIONS of them)")
    p.set_defaults(run=cmd_worker, role=SERVICE_ROLE)
    p = sub.add_parser("place-order", parents=[common], help="place one order; prints its id")
    p.add_argument("--product", type=arg.product, required=True)
    p.add_argument("--quantity", type=arg.quantity, required=True, help=arg.quantity.bounds)
    p.add_argument("--order-id", type=arg.order_id)
    p.add_argument("--deadline", type=arg.deadline, metavar="SECONDS",
                   help=f"cancel unless shipped by then, {arg.deadline.bounds} (30 days; "
                        "default: $CHOREO_ORDER_DEADLINE_S or 300)")
    p.set_defaults(run=cmd_place_order, role="order", orders_only=True)
    for verb, fn, text in (("status", cmd_status, "an order's state in every service"),
                           ("trace", cmd_trace, "an order's events in causal order")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("order_id", metavar="ID", type=arg.order_id,
                       help="the order id (another app: the instance id, its events' order_id)")
        p.set_defaults(run=fn, role="dashboard", orders_only=verb == "status")
    p.add_argument("--json", action="store_true", help="the trace as JSON")      # trace's own
    p = sub.add_parser("load", parents=[common], help="place N orders and measure them")
    p.add_argument("--orders", type=arg.orders, required=True, help=arg.orders.bounds)
    p.add_argument("--timeout", type=arg.load_timeout, default=120.0, metavar="SECONDS",
                   help=f"give up waiting after this, {arg.load_timeout.bounds} (default: 120)")
    p.add_argument("--rate", type=arg.rate,
                   help=f"orders per second, {arg.rate.bounds} (default: as fast as possible)")
    p.add_argument("--product", type=arg.product, default=101)
    p.add_argument("--quantity", type=arg.quantity, default=1, help=f"per order, {arg.quantity.bounds}")
    p.add_argument("--deadline", type=arg.deadline, metavar="SECONDS",
                   help=f"each order's deadline, {arg.deadline.bounds} (30 days; "
                        "default: $CHOREO_ORDER_DEADLINE_S or 300)")
    p.set_defaults(run=cmd_load, role="order", orders_only=True)
    p = sub.add_parser("timers", parents=[logs], help="run the rq worker that fires the app's timers (the saga's deadlines)")
    p.add_argument("--rearm", action="store_true",
                   help="instead: arm again the deadline of every PENDING order placed with one "
                        "(after losing the timers' Redis, or timers that failed), print how many, exit")
    p.add_argument("--deadline", type=arg.deadline, metavar="SECONDS",
                   help="with --rearm: arm orders whose record names no deadline (placed by a version "
                        f"before 95bfb9a) at their creation + SECONDS, {arg.deadline.bounds}")
    p.set_defaults(run=cmd_timers, role="timers")
    p = sub.add_parser("dashboard", parents=[common], help="live view of streams, groups, orders")
    p.add_argument("--refresh", type=arg.refresh, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (and between the two reads of --once/--json), "
                        f"{arg.refresh.bounds}")
    p.add_argument("--once", action="store_true", help="print one frame and exit (no alternate screen)")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON and exit")
    p.set_defaults(run=cmd_dashboard, role="dashboard")
    p = sub.add_parser("exporter", parents=[logs],
                       help="serve the dashboard's fleet view as Prometheus metrics (read-only)")
    p.add_argument("--port", type=arg.port, default=EXPORTER_PORT,
                   help=f"serve http://<host>:PORT/metrics (default: {EXPORTER_PORT})")
    p.add_argument("--addr", default="0.0.0.0", help="address to listen on (default: all)")
    p.set_defaults(run=cmd_exporter, role="dashboard", log_service="exporter")
    p = sub.add_parser("topology", parents=[common], help="which service consumes and emits what")
    p.add_argument("--format", choices=("text", "mermaid", "dot"), default="text",
                   help="text (default), a Mermaid flowchart or a Graphviz dot graph")
    p.set_defaults(run=cmd_topology)
    p = sub.add_parser("schema", parents=[common], help="the JSON Schema of every event type's data")
    p.add_argument("--format", choices=("json-schema", "asyncapi"), default="json-schema",
                   help="json-schema (default): each type's data under $defs; asyncapi: an "
                        "AsyncAPI 2.6 document of the streams, who publishes and consumes them")
    p.set_defaults(run=cmd_schema)
    _add_dlq_verbs(sub, common, services)
    _add_ops_verbs(sub, common, logs, services)
    _add_bench_verb(sub, common)
    return parser


def app_spec(argv: list[str]) -> str | None:
    """--app's value if given (anywhere: it is an option of every verb), else $CHOREO_APP."""
    for i, word in enumerate(argv):
        if word == "--app" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--app="):
            return word.partition("=")[2]
    return os.environ.get("CHOREO_APP") or None


def early_logging(args) -> tuple[str, str]:
    """The log format and level as soon as the arguments are parsed, before the settings are
    read: a bad setting (or anything after) is then said in the format asked for. A value
    Settings will refuse falls back to the default here; Settings says why."""
    role = role_of(args)

    def env(base: str) -> str:          # CHOREO_<FIELD>_<ROLE> wins, as in Settings.from_env
        return (role and os.environ.get(f"{base}_{role.upper()}")) or os.environ.get(base, "")
    fmt = getattr(args, "log_format", None) or env("CHOREO_LOG_FORMAT")
    level = (getattr(args, "log_level", None) or env("CHOREO_LOG_LEVEL")).upper()
    return (fmt if fmt in ("plain", "json") else "plain", level if level in LOG_LEVELS else "INFO")


def log_service(args) -> str:
    """The `service` of the process's own lines (JSON): the worker's service, else the verb's."""
    return getattr(args, "log_service", None) or role_of(args) or args.verb


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        app = load_app(app_spec(argv))
    except AppError as exc:
        print(f"choreo: {exc}", file=sys.stderr)
        return 2
    try:
        args = build_parser(app).parse_args(argv)
        args.app = app
        if getattr(args, "orders_only", False) and not app.orders:
            raise UsageError(f"choreo {args.verb}: a command of the order saga; app {app.name!r} "
                             f"has no orders")
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except SystemExit as exc:           # --version, --help: printed, and done
        return exc.code if isinstance(exc.code, int) else 0
    # From here every line goes through logging. The demo tells the story itself: its four
    # workers' per-event lines would only interleave with it.
    fmt, level = early_logging(args)
    configure_logging(fmt, level, service=log_service(args), events=args.verb != "demo")
    log = logging.getLogger(CLI)
    try:
        settings = Settings.from_env(service=role_of(args), redis_url=args.redis_url,
                                     log_format=getattr(args, "log_format", None),
                                     log_level=getattr(args, "log_level", None),
                                     metrics_port=getattr(args, "metrics_port", None))
        # CHOREO_PARTITIONS, checked before anything runs; the URL in force (--redis-url, a
        # role's REDIS_URL_<ROLE>) decides whether this process is on a cluster.
        if layout.current().cluster != cluster_url(settings.url):
            layout.use(dataclasses.replace(layout.current(), cluster=cluster_url(settings.url)))
    except (SettingsError, LayoutError) as exc:
        log.error(f"choreo: {exc}")
        return 2
    try:
        return args.run(args, settings)
    except BusUnavailable as exc:
        # A server (or a cluster node) gone after the bus opened: say so, not just its error.
        said = str(exc)
        log.error(f"choreo: {said}" if said.startswith("cannot reach") else
                  f"choreo: lost Redis at {redact(settings.url)} ({said})"
                  + ("; a cluster node is down: try again once its replica has taken over"
                     if cluster_url(settings.url) else ""))
        return 1
    except (BusError, OrderRejected) as exc:
        log.error(f"choreo: {exc}")
        return 1
    except (SettingsError, UnusableUrl, LayoutError) as exc:   # read when a worker starts or the bus opens
        log.error(f"choreo: {exc}")
        return 2
    except MetricsUnavailable as exc:             # the extra missing (2) or the port taken (1)
        log.error(f"choreo: {exc}")
        return 1 if exc.port_taken else 2
    except TracingUnavailable as exc:             # CHOREO_TRACING=1 without what it needs
        log.error(f"choreo: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`choreo trace 1 | head`): stop quietly, as the docs of `signal`
        # advise, and keep the interpreter from complaining about stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
