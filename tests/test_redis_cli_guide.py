"""docs/keys.md's "Inspect with redis-cli" section, run: every command in it answers without error
against a real redis-server after `choreo demo`, and the section covers every stream, group,
dead-letter stream and domain key the code declares, so the guide cannot rot."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from choreo.bus import keys as bus_keys
from choreo.ops.dashboard import declared_streams
from choreo.config.catalogue import CATALOGUE
from choreo.workers import SERVICES, keys

KEYS_DOC = Path(__file__).resolve().parent.parent / "docs" / "keys.md"
REDIS_CLI = "/usr/bin/redis-cli"
# Keys that hold something after one demo order: reading them must show it, not just "no error".
# (No trace:1: the events of an order are listed in the services' records of it.)
# (No reservation:1, payment:1 or shipment:1 either: settled, each is filed, a field of a bucket.)
FILLED = (keys.order("1"), keys.ORDER_SEQ,
          keys.orders_index(), keys.orders_by_status(), bus_keys.filed(keys.reservation("1"))[0],
          bus_keys.filed(keys.payment("1"))[0], keys.payment_totals(),
          bus_keys.filed(keys.shipment("1"))[0], "seen:")


def guide_commands() -> list[str]:
    """Lines starting `redis-cli ` inside the section's code blocks."""
    section = KEYS_DOC.read_text().split("\n## Inspect with redis-cli\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return [line for block in blocks for line in block.splitlines() if line.startswith("redis-cli ")]


COMMANDS = guide_commands()


def test_every_command_says_what_to_look_for():
    assert len(COMMANDS) > 50
    assert all(" # " in line and line.split(" # ", 1)[1].strip() for line in COMMANDS)


def test_the_guide_covers_every_stream_group_dead_letter_stream_and_key():
    words = [shlex.split(line, comments=True)[1:] for line in COMMANDS]
    said = {" ".join(w) for w in words}
    for stream in declared_streams():
        assert f"XINFO STREAM {stream}" in said and f"XINFO GROUPS {stream}" in said
        for name, service in SERVICES.items():
            if bus_keys.event_type_of(stream) in service.consumes:
                assert f"XINFO CONSUMERS {stream} {name}" in said
                assert f"XPENDING {stream} {name}" in said
    for name in SERVICES:
        assert f"XLEN {bus_keys.dead_letters(name)}" in said
        assert any(w[:2] == ["XREVRANGE", bus_keys.dead_letters(name)] for w in words)
        assert any(w[:2] == ["ZCARD", bus_keys.seen(name)] for w in words)
    named = {w[1] for w in words if len(w) > 1}
    for key in FILLED[:-1] + tuple(keys.stock(p) for p in CATALOGUE):
        assert key in named, key


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory):
    """A server of this module's own with one demo run in it: the guide only reads."""
    from tests.redis_server import RedisServer
    from tests.conftest import BIN, ROOT
    server = RedisServer(tmp_path_factory.mktemp("guide")).start()
    demo = subprocess.run([str(BIN / "choreo"), "demo", "--redis-url", server.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    yield server
    server.stop()


@pytest.mark.parametrize("line", COMMANDS)
def test_command_answers_without_error(after_demo, line):
    words = shlex.split(line, comments=True)
    # --no-raw: redis-cli exits 0 on an error reply; this way the reply says "(error)".
    done = subprocess.run([REDIS_CLI, "-p", str(after_demo.port), "--no-raw", *words[1:]],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert "(error)" not in done.stdout, done.stdout
    if any(key in line for key in FILLED) or "stock:101" in line:
        assert done.stdout.strip() not in ("", "(empty array)", "(nil)"), line
