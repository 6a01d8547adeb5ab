"""The hot path's cheaper parts say and send exactly what the plain ones did: event timestamps,
event ids, the packing of commands for Redis, and the reading of a pipeline's errors."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone

import hiredis
import pytest
import redis
from redis.connection import HiredisRespSerializer

from choreo.bus.connect import LeanPacker, joined_words, open_bus
from choreo.bus.contract import BusError, BusUnavailable, GroupMissing
from choreo.bus.envelope import iso_ms, new_id
from choreo.bus.redis_streams import pipelined, read_records, translated_errors


def plain_iso_ms(ts: float) -> str:
    """What iso_ms was before it cached the text up to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.mark.parametrize("ts", [0.0, -0.0, 1.0, 1795958229.305, 1795958229.9995, 1795958229.9999995,
                                1795958229.0000004, 1e9 + 0.0005, 4102444799.999, 946684799.9996,
                                -1.5, -0.0004, 253402300799.999])
def test_iso_ms_says_what_datetime_says(ts):
    assert iso_ms(ts) == plain_iso_ms(ts)


def test_iso_ms_across_a_run_of_milliseconds_and_seconds():
    start = 1795958229.0
    for i in range(0, 5000, 7):
        ts = start + i / 1000 + 0.0000004
        assert iso_ms(ts) == plain_iso_ms(ts)


def test_event_ids_are_32_hex_digits_and_never_repeat_across_a_fork():
    mine = [new_id() for _ in range(10)]             # the block is part used when it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: what it hands out next
        os.write(write, "".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100 * 32 + 1).decode()
    os.waitpid(pid, 0)
    theirs = {child[i:i + 32] for i in range(0, len(child), 32)}
    mine += [new_id() for _ in range(100)]
    assert len(theirs) == 100 and len(set(mine)) == 110 and not theirs & set(mine)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in mine)


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", "inventory", 12, 0, "1", "1795958229305-0", 0, "", 0, 1,
     "2", "1", "PUBLISH", 11, "é", 1.5, -0.0, 2 ** 63, b"raw"),
    ("ZADD", "seen:x", "NX", 1e-07, "m", 0.1 + 0.2, "n", 2 ** 53, "o"),
    ("XADD", "events:OrderCreated", "MAXLEN", "~", 1000, "*", "id", "x", "data", '{"a":1}'),
    ("SET", "k", "v", "EX", 60, "NX"),
    ("CLIENT SETNAME", "choreo"),                    # two words: packed the usual way
    # Long enough to be joined (LeanPacker.LONG): all ASCII text; one word not; one not a str.
    ("EVALSHA", "a" * 40, "2", "k1", "k2", "g", "40", "", *[f"w{n}" for n in range(40)], "x" * 300),
    ("EVALSHA", "a" * 40, "1", "k1", *["w"] * 40, "prix: 12 €", "end"),
    ("EVALSHA", "a" * 40, 1, "k1", *["w"] * 40, b"raw", 2.5),
])
def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them(args):
    assert b"".join(LeanPacker().pack(*args)) == b"".join(HiredisRespSerializer().pack(*args))


def test_long_commands_of_ascii_text_are_joined_and_any_other_is_left_to_hiredis():
    words = ("EVALSHA", "a" * 40, "1", "k", *[str(n) for n in range(100)])
    assert joined_words(words) == hiredis.pack_command(words)
    assert joined_words((*words, "é")) is None           # lengths would be of characters
    assert joined_words((*words, 1)) is None and joined_words((*words, b"x")) is None
    assert joined_words((*words, "\udc80")) is None      # a lone surrogate: hiredis says why


def test_a_missing_group_inside_a_pipeline_is_a_missing_group():
    """redis-py puts "Command # n (...) of pipeline caused error: " before Redis's words."""
    with pytest.raises(GroupMissing):
        with translated_errors():
            raise redis.ResponseError("Command # 1 (XPENDING events:OrderCreated inventory - + 10) of "
                                      "pipeline caused error: NOGROUP No such key 'events:OrderCreated'")
    with pytest.raises(BusError) as refused:
        with translated_errors():
            raise redis.ResponseError("Command # 2 (HGET k f) of pipeline caused error: WRONGTYPE x")
    assert not isinstance(refused.value, GroupMissing)


def test_pipelined_replies_are_a_pipelines_and_a_refusal_raises_after_every_reply_is_read(any_bus):
    """bus.redis_streams.pipelined, as redis-py's pipeline: the replies in order; a command Redis
    refuses raises (with the pipeline's words before Redis's) once the others are read, so the
    connection goes back to the pool with nothing left on it."""
    client = any_bus.client
    client.hset("h", mapping={"a": "1", "b": "é"})
    client.set("s", "v")
    commands = [("HGETALL", "h"), ("HGETALL", "none"), ("HGET", "h", "b"), ("HGET", "h", "zz")]
    assert [r if not isinstance(r, list) else dict(zip(r[::2], r[1::2]))
            for r in pipelined(client, commands)] == [{"a": "1", "b": "é"}, {}, "é", None]
    with pytest.raises(redis.ResponseError) as refused:
        pipelined(client, [("HGET", "h", "a"), ("HGETALL", "s"), ("HGETALL", "s"), ("HGET", "h", "a")])
    assert str(refused.value).startswith("Command # 2 (HGETALL s) of pipeline caused error: WRONGTYPE")
    with pytest.raises(BusError):
        with translated_errors():
            pipelined(client, [("HGETALL", "s")])
    assert pipelined(client, [("HGET", "h", "a")] * 3) == ["1", "1", "1"]   # nothing left unread
    assert read_records(client, ["h", "none"]) == [{"a": "1", "b": "é"}, {}]


@pytest.mark.parametrize("protocol", [2, 3])
def test_reads_sent_past_redis_pys_pipeline_read_alike_over_resp2_and_resp3(redis_url, protocol):
    """read_new and read_hashes take Redis's replies as they come (RESP2 lists, RESP3 maps)."""
    with open_bus(f"{redis_url}?protocol={protocol}") as bus:
        bus.ensure_groups("g", ["s1", "s2"])
        bus.raw.xadd("s1", {"id": "a", "data": "é"})
        bus.raw.xadd("s2", {b"k": b"\xff"})
        bus.client.hset("h", mapping={"f": "1", "_v": "2"})
        got = bus.read_new("g", "c", ["s1", "s2"], 10, 0)
        assert [(d.stream, d.fields, bool(d.error)) for d in got] == \
            [("s1", {"id": "a", "data": "é"}, False), ("s2", {"k": "\\xff"}, True)]
        began = time.monotonic()
        assert bus.read_new("g", "c", ["s1", "s2"], 10, 150) == []      # blocked, then nothing
        assert time.monotonic() - began >= 0.14
        assert bus.read_hashes(["h", "absent"]) == [{"f": "1", "_v": "2"}, {}]


def test_a_blocked_read_cut_off_is_redis_unavailable_and_the_next_read_works(own_redis):
    """pipelined disconnects a connection it could not read to the end, and gives it back. (A
    server of its own: on the shared one, another test's idle connection may also show XREADGROUP
    as its last command.)"""
    redis_url = own_redis.url
    with open_bus(redis_url) as bus:
        bus.ensure_groups("g", ["s"])
        outcome: list = []

        def read():
            try:
                outcome.append(bus.read_new("g", "c", ["s"], 10, 1000))
            except Exception as exc:            # noqa: BLE001 (what it raises is the point)
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        admin = redis.Redis.from_url(redis_url, decode_responses=True)
        deadline = time.monotonic() + 2
        while not (blocked := [c for c in admin.client_list()
                               if c["cmd"] == "xreadgroup" and "b" in c["flags"]]):
            assert time.monotonic() < deadline, "the read never blocked"
            time.sleep(0.01)
        admin.client_kill_filter(_id=blocked[0]["id"])
        reader.join(5)
        assert isinstance(outcome[0], BusUnavailable), outcome
        bus.raw.xadd("s", {"a": "1"})
        assert [d.fields for d in bus.read_new("g", "c", ["s"], 10, 0)] == [{"a": "1"}]
