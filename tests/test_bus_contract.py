"""One suite, two backends: fakeredis and a real redis-server. Where fakeredis differs from Redis,
a case here fails instead of a surprise in production."""

from __future__ import annotations

import pytest
import redis

from importlib import resources

from choreo.bus.contract import Commit, Outcome
from choreo.bus.envelope import Envelope
from choreo.bus.ops import AddTo, Append, Count, DropFields, Expire, Index, Publish, SetFields
from choreo.bus import inspect, keys

S = keys.stream("OrderCreated")


class Words(tuple):
    """An op given as the raw words commit.lua reads, for testing the script's own checks on
    what no typed op can say (fields not in pairs). Its keys (a PUBLISH's stream and trace, any
    other op's first argument) go to KEYS as the typed ops' do."""

    def __new__(cls, *words):
        return super().__new__(cls, words)

    def words(self, key) -> tuple:
        name, *args = self
        n_keys = 2 if name == "PUBLISH" else 1
        return (name, *(key(a) for a in args[:n_keys]), *args[n_keys:])


def publish(bus, n=1, order_id="1"):
    commits = []
    for _ in range(n):
        e = Envelope.new("OrderCreated", order_id, "order")
        commits.append(Commit(ops=[Publish(S, e.fields(), trace=keys.trace(order_id))]))
    assert bus.commit("", commits) == [Outcome.APPLIED] * n


def test_group_created_at_zero_sees_events_published_before_it(any_bus):
    publish(any_bus, 3)
    any_bus.ensure_groups("inventory", [S])
    any_bus.ensure_groups("inventory", [S])          # idempotent: BUSYGROUP swallowed
    got = any_bus.read_new("inventory", "c1", [S], count=10, block_ms=10)
    assert len(got) == 3 and all(d.fields["type"] == "OrderCreated" for d in got)


def test_read_new_blocks_briefly_and_returns_nothing_on_an_empty_stream(any_bus):
    any_bus.ensure_groups("inventory", [S])
    assert any_bus.read_new("inventory", "c1", [S], count=10, block_ms=50) == []


def test_unacked_entries_stay_pending_for_their_consumer(any_bus):
    publish(any_bus, 2)
    any_bus.ensure_groups("g", [S])
    first = any_bus.read_new("g", "c1", [S], 10, 10)
    mine = any_bus.read_own_pending("g", "c1", {S: "0"}, 10)
    assert [d.entry_id for d in mine] == [d.entry_id for d in first]
    assert any_bus.read_own_pending("g", "c2", {S: "0"}, 10) == []
    after_first = any_bus.read_own_pending("g", "c1", {S: first[0].entry_id}, 10)
    assert [d.entry_id for d in after_first] == [first[1].entry_id]


def test_commit_applies_writes_events_marker_and_ack_together(any_bus):
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    d = any_bus.read_new("g", "c1", [S], 10, 10)[0]
    commit = Commit(checks={"h": "0"}, ops=[SetFields("h", {"a": "1"}), AddTo("h", "n", 5)],
                    ack=(S, d.entry_id), seen="seen:g", seen_id="x", seen_ttl_s=60)
    assert any_bus.commit("g", [commit]) == [Outcome.APPLIED]
    assert any_bus.read_hashes(["h"]) == [{"a": "1", "n": "5", "_v": "1"}]     # one bump a commit
    assert any_bus.read_own_pending("g", "c1", {S: "0"}, 10) == []
    now = int(any_bus.client.time()[0])
    assert now < any_bus.client.zscore("seen:g", "x") <= now + 60


def test_second_commit_with_same_marker_only_acks(any_bus):
    publish(any_bus, 2)
    any_bus.ensure_groups("g", [S])
    d1, d2 = any_bus.read_new("g", "c1", [S], 10, 10)
    op = [AddTo("counter", "n", 1)]
    outcomes = any_bus.commit("g", [Commit(ops=op, ack=(S, d1.entry_id), seen="seen:g", seen_id="e",
                                           seen_ttl_s=60),
                                    Commit(ops=op, ack=(S, d2.entry_id), seen="seen:g", seen_id="e",
                                           seen_ttl_s=60)])
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert any_bus.read_hashes(["counter"])[0]["n"] == "1"
    assert any_bus.read_own_pending("g", "c1", {S: "0"}, 10) == []


def test_an_entry_committed_twice_is_applied_once_because_its_ack_is_the_guard(any_bus):
    """No dedup id at all (a dead letter's commit has none): the second commit of the same entry
    finds it acknowledged already, so it is a duplicate and changes nothing."""
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    (d,) = any_bus.read_new("g", "c1", [S], 10, 10)
    op = [AddTo("counter", "n", 1), Publish("events:Out", {"f": "v"})]
    outcomes = any_bus.commit("g", [Commit(ops=op, ack=(S, d.entry_id)), Commit(ops=op, ack=(S, d.entry_id))])
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert any_bus.commit("g", [Commit(ops=op, ack=(S, d.entry_id))]) == [Outcome.DUPLICATE]
    assert any_bus.read_hashes(["counter"])[0]["n"] == "1"
    assert any_bus.client.xlen("events:Out") == 1


def _once_of(bus, stream: str) -> list[str | None]:
    return [fields.get("once") for _, fields in bus.client.xrange(stream)]


def test_an_event_published_by_a_commit_that_cannot_apply_twice_says_once(any_bus):
    """Acked, seen-guarded, or writing a hash whose version it checked: the same commit sent
    again is a duplicate or a conflict, so what it publishes reaches the stream once (`once` 1)."""
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    (d,) = any_bus.read_new("g", "c1", [S], 10, 10)
    out = [Publish("events:Out", {"f": "v"})]
    acked = Commit(ops=out, ack=(S, d.entry_id))
    seen = Commit(ops=out, seen="seen:g", seen_id="e", seen_ttl_s=60)
    created = Commit(checks={"made": "0"}, ops=[SetFields("made", {"a": "1"}), *out])
    for commit in (acked, seen, created):
        assert any_bus.commit("g", [commit]) == [Outcome.APPLIED]
        assert any_bus.commit("g", [commit]) != [Outcome.APPLIED]     # sent again: not applied
    assert _once_of(any_bus, "events:Out") == ["1", "1", "1"]


def test_an_event_a_commit_could_publish_twice_carries_no_once(any_bus):
    """No ack, no seen id, and no checked hash it writes (only read, or deleted again): the same
    commit sent again publishes again, so its consumers must remember the event's id."""
    out = [Publish("events:Out", {"f": "v"})]
    any_bus.client.hset("read", "_v", "3")
    plain = Commit(ops=out)
    read_only = Commit(checks={"read": "3"}, ops=[SetFields("other", {"a": "1"}), *out])
    deleted = Commit(checks={"gone": "0"}, ops=[SetFields("gone", {"a": "1"}), Expire("gone", 0), *out])
    for commit in (plain, read_only, deleted):
        assert any_bus.commit("", [commit]) == [Outcome.APPLIED]
        assert any_bus.commit("", [commit]) == [Outcome.APPLIED]      # sent again: applied again
    # Deleted and made again in one commit: its version may come back to what the check saw.
    any_bus.client.hset("remade", mapping={"a": "0", "_v": "1"})
    remade = Commit(checks={"remade": "1"}, ops=[Expire("remade", 0), SetFields("remade", {"a": "1"}), *out])
    assert any_bus.commit("", [remade]) == [Outcome.APPLIED]
    assert _once_of(any_bus, "events:Out") == [None] * 7


def test_dedup_ids_are_forgotten_after_their_time_and_not_before(any_bus):
    """seen:<group> stays bounded: an id past its time is removed by the next commit using the
    set, so the same id is applied again; one inside its time is a duplicate."""
    now = int(any_bus.client.time()[0])
    any_bus.client.zadd("seen:g", {"old": now - 1, "young": now + 3600})
    op = [AddTo("counter", "n", 1)]
    outcomes = any_bus.commit("", [Commit(ops=op, seen="seen:g", seen_id="young", seen_ttl_s=60),
                                   Commit(ops=op, seen="seen:g", seen_id="old", seen_ttl_s=60)])
    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED]
    assert any_bus.read_hashes(["counter"])[0]["n"] == "1"
    assert any_bus.client.zscore("seen:g", "old") >= now + 60


def test_writes_that_disagree_on_a_keys_type_are_refused_before_the_first_is_made(any_bus):
    """Key types are asked of Redis once per key per batch; the script's own writes count: a key
    an earlier commit of the batch made a hash, or an earlier write of the same commit will make
    one, is not a list."""
    first = Commit(ops=[SetFields("k", {"a": "1"})])
    later = Commit(ops=[Append("k", "v")])
    assert any_bus.commit("", [first, later]) == [Outcome.APPLIED, Outcome.REFUSED]
    assert "k holds a hash, not a list" in later.refusal
    both = Commit(ops=[SetFields("fresh", {"a": "1"}), Append("fresh", "v")])
    assert any_bus.commit("", [both]) == [Outcome.REFUSED]
    assert not any_bus.client.exists("fresh")


def test_conflict_applies_nothing_and_stops_the_rest_of_the_batch(any_bus):
    any_bus.commit("", [Commit(ops=[SetFields("h", {"a": "1"})])])           # h._v is now 1
    stale = Commit(checks={"h": "0"}, ops=[SetFields("h", {"a": "2"})])
    later = Commit(ops=[SetFields("other", {"b": "1"})])
    assert any_bus.commit("", [stale, later]) == [Outcome.CONFLICT, Outcome.CONFLICT]
    assert any_bus.read_hashes(["h", "other"]) == [{"a": "1", "_v": "1"}, {}]


def test_a_conflicting_commit_leaves_its_entry_pending_and_so_do_the_ones_after_it(any_bus):
    """CONFLICT means "handle it again on fresh reads": acking it would drop the entry for good."""
    publish(any_bus, 2)
    any_bus.ensure_groups("g", [S])
    d1, d2 = any_bus.read_new("g", "c1", [S], 10, 10)
    any_bus.commit("", [Commit(ops=[SetFields("h", {"a": "1"})])])           # h._v is now 1
    stale = Commit(checks={"h": "0"}, ops=[SetFields("h", {"a": "2"})], ack=(S, d1.entry_id),
                   seen="seen:g", seen_id="1", seen_ttl_s=60)
    later = Commit(ops=[SetFields("other", {"b": "1"})], ack=(S, d2.entry_id), seen="seen:g",
                   seen_id="2", seen_ttl_s=60)
    assert any_bus.commit("g", [stale, later]) == [Outcome.CONFLICT, Outcome.CONFLICT]
    assert any_bus.client.xpending(S, "g")["pending"] == 2
    assert not any_bus.client.exists("seen:g")


def test_publish_appends_to_the_order_trace(any_bus):
    publish(any_bus, 2, order_id="42")
    lines = any_bus.client.hkeys(keys.trace("42"))
    assert len(lines) == 2 and all(line.startswith(S + " ") for line in lines)
    assert inspect.trace_refs(any_bus, keys.trace("42")) == [tuple(line.split(" ")) for line in lines]
    assert set(any_bus.client.hvals(keys.trace("42"))) == {""}


def test_a_trace_keeps_its_expiry_and_one_an_earlier_version_made_as_a_list_stays_one(any_bus):
    publish(any_bus, 1, order_id="42")
    any_bus.client.expire(keys.trace("42"), 500)            # the order ended
    publish(any_bus, 1, order_id="42")                       # a late compensation
    assert 0 < any_bus.client.ttl(keys.trace("42")) <= 500
    assert len(inspect.trace_refs(any_bus, keys.trace("42"))) == 2
    any_bus.client.rpush(keys.trace("7"), f"{S} 1-0")        # in flight across an upgrade
    publish(any_bus, 2, order_id="7")
    assert any_bus.client.type(keys.trace("7")) == "list"
    refs = inspect.trace_refs(any_bus, keys.trace("7"))
    assert refs[0] == (S, "1-0") and len(refs) == 3 and refs[1][1] != refs[2][1]
    assert inspect.trace_refs(any_bus, keys.trace("8")) == []
    any_bus.client.hset(keys.trace("9"), mapping={f"{S} 5-0": "", f"{S} 2-0": "", "junk": "", f"{S} x-1": ""})
    assert inspect.trace_refs(any_bus, keys.trace("9")) == [(S, "x-1"), (S, "2-0"), (S, "5-0")]


@pytest.mark.parametrize("make", [lambda c: c.set("t:odd", "v"), lambda c: c.zadd("t:odd", {"m": 1})])
def test_a_trace_key_of_another_type_is_refused_before_the_event_is_added(any_bus, make):
    make(any_bus.client)
    c = Commit(ops=[Publish(S, {"f": "v"}, trace="t:odd")])
    assert any_bus.commit("", [c]) == [Outcome.REFUSED] and "t:odd holds a" in c.refusal
    assert not any_bus.client.exists(S)


def test_a_list_trace_a_later_op_of_the_commit_deletes_is_appended_to_as_checked(any_bus):
    """The trace's form is decided with its checks: an EXPIRE 0 after the publish (which makes
    the checks forget the key's type) must not turn the RPUSH into a GET of a list halfway."""
    any_bus.client.rpush("t:old", f"{S} 1-0")
    c = Commit(ops=[Publish(S, {"f": "v"}, trace="t:old"), Expire("t:old", 0), SetFields("after", {"a": "1"})])
    assert any_bus.commit("", [c]) == [Outcome.APPLIED]
    assert not any_bus.client.exists("t:old") and any_bus.read_hashes(["after"]) == [{"a": "1", "_v": "1"}]


def test_publish_with_a_max_length_keeps_only_the_newest_entries(any_bus):
    ids = []
    for n in range(5):
        any_bus.commit("", [Commit(ops=[Publish("dlq:g", {"n": str(n)}, max_len=3)])])
        ids.append(any_bus.client.xrevrange("dlq:g", count=1)[0][0])
    assert [(i, f) for i, f in any_bus.client.xrange("dlq:g")] == \
        [(ids[n], {"n": str(n)}) for n in (2, 3, 4)]


def test_publish_with_a_bad_max_length_is_refused_before_any_write(any_bus):
    bad = Commit(ops=[SetFields("h", {"a": "1"}), Publish("dlq:g", {"n": "1"}, max_len="~3")])
    assert any_bus.commit("", [bad]) == [Outcome.REFUSED]
    assert "max length ~3 of dlq:g is not a whole number" in bad.refusal
    assert any_bus.read_hashes(["h"]) == [{}] and not any_bus.client.exists("dlq:g")


@pytest.mark.parametrize("op, why", [
    (Expire("h", "99999999999999999999"), "expiry 99999999999999999999 of h is not whole seconds"),
    (Words("PUBLISH", "events:Out", "", "", "f"), "needs fields in name, value pairs"),
    (Publish("events:Out", {"f": "v"}, max_len=99999999999999999999), "max length 99999999999999999999"),
    (Words("HSET", "h", "a"), "HSET h needs fields in name, value pairs"),
    (Words("HDEL", "h"), "HDEL h needs a field"),
    (Words("HINCRBY", "h", "n", "1.5"), "amount 1.5 for h field n is not an integer"),
    (Words("COUNT", "h", "n", "x"), "amount x for h field n is not an integer"),
    (Words("COUNT", "h", "n"), "amount nil for h field n is not an integer"),
    (Words("COUNT", "h", "n", "007"), "amount 007 for h field n is not an integer"),
    (Words("HINCRBY", "h", "n", "-0"), "amount -0 for h field n is not an integer"),
    (DropFields("h", ("a", "_v")), "HDEL h may not remove the version _v"),
    (Words("COUNT", "h", "n", "1", "2"), "COUNT h takes one field and one amount"),
    (Words("ZADD", "z", "1"), "ZADD z needs a score and a member"),
    (Index("z", float("nan"), "m"), "score nan for z is not a number Redis takes"),
    (Words("ZADD", "z", " 1", "m"), "score  1 for z is not a number"),
    (Words("ZADD", "z", "1 ", "m"), "score 1  for z is not a number"),
    (Words("ZADD", "z", "1e500", "m"), "score 1e500 for z is not a number"),
    (Words("ZADD", "z", "-1e-500", "m"), "score -1e-500 for z is not a number"),
    (Words("ZADD", "z", "", "m"), "score  for z is not a number"),
    (Words("ZADD", "z", "one", "m"), "score one for z is not a number"),
    (Words("ZADD", "z", "5\x00junk", "m"), "for z is not a number Redis takes"),
    (Words("RPUSH", "l"), "RPUSH l needs a value"),
])
def test_a_write_redis_would_refuse_halfway_is_refused_before_the_ack(any_bus, op, why):
    """The ack and the dedup id are written before the effects: a write Redis would refuse must
    be caught by the checks, or the entry would end acknowledged with half its effects."""
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    [d] = any_bus.read_new("g", "c", [S], 10, 10)
    bad = Commit(ops=[AddTo("money", "charged", 100), op], ack=(S, d.entry_id),
                 seen="seen:g", seen_id="x", seen_ttl_s=60)
    assert any_bus.commit("g", [bad]) == [Outcome.REFUSED] and why in bad.refusal
    assert any_bus.read_hashes(["money"]) == [{}] and not any_bus.client.exists("events:Out")
    assert any_bus.client.xpending(S, "g")["pending"] == 1


# Score words Redis's ZADD refuses (string2d), and words it takes: the commit script's check must
# refuse the first (else a commit is half-applied) and should pass the second.
REFUSED_SCORES = ["nan", " 1", "1 ", "\t1", "1e500", "-1e-500", "", "one", "5\x00junk", "0x", "1x"]


@pytest.mark.parametrize("score", ["0", "-0", "0.0", ".0e7", "1e3", "-2.5", ".5", "5.", "0x10", "1e308",
                                   "inf", "-inf", "+Infinity", "1e-300", "+1", "0X1P3"])
def test_a_score_redis_takes_is_written(real_bus, score):
    """The score check refuses what Redis would refuse halfway, and no more of what a user
    writes: each of these is a score Redis takes (a real server: fakeredis refuses hex)."""
    assert real_bus.commit("", [Commit(ops=[Words("ZADD", "z", score, "m")])]) == [Outcome.APPLIED]
    assert real_bus.client.zscore("z", "m") == (float.fromhex(score) if "x" in score.lower() else float(score))


@pytest.mark.parametrize("score", REFUSED_SCORES)
def test_a_score_the_check_refuses_is_one_redis_refuses(real_bus, score):
    """The same words, each refused by the check and by Redis itself (a real server's string2d):
    the check refuses no word Redis would take halfway through a commit, as far as these go."""
    bad = Commit(ops=[SetFields("h", {"a": "1"}), Words("ZADD", "z", score, "m")])
    assert real_bus.commit("", [bad]) == [Outcome.REFUSED] and "is not a number Redis takes" in bad.refusal
    with pytest.raises(redis.ResponseError, match="not a valid float"):
        real_bus.client.zadd("z", {"m": score})
    assert real_bus.read_hashes(["h"]) == [{}] and not real_bus.client.exists("z")


def test_a_duplicates_planned_writes_say_nothing_of_the_next_commits_keys(any_bus):
    """A duplicate (its XACK returns 0) is checked, so its writes' key types are planned, and
    then not applied: the next commit of the batch writing the same key as another type must
    find the key as Redis has it (absent), not as the duplicate would have left it."""
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    [d] = any_bus.read_new("g", "c", [S], 10, 10)
    assert any_bus.commit("g", [Commit(ack=(S, d.entry_id))]) == [Outcome.APPLIED]
    again = Commit(ops=[Append("k", "x")], ack=(S, d.entry_id))
    after = Commit(ops=[SetFields("k", {"a": "1"})])
    assert any_bus.commit("g", [again, after]) == [Outcome.DUPLICATE, Outcome.APPLIED], after.refusal
    assert any_bus.read_hashes(["k"]) == [{"a": "1", "_v": "1"}]


def test_versions_go_up_once_per_commit_in_a_batch_of_many(any_bus):
    """Each commit bumps the versions of the hashes it wrote once: not again for a later commit
    of the same batch that writes other hashes."""
    batch = [Commit(ops=[SetFields("h1", {"a": "1"}), AddTo("h1", "n", 1)]),
             Commit(ops=[SetFields("h2", {"a": "1"})]),
             Commit(ops=[AddTo("h1", "n", 1), DropFields("h3", ("b",))])]
    assert any_bus.commit("", batch) == [Outcome.APPLIED] * 3
    assert any_bus.read_hashes(["h1", "h2", "h3"]) == [{"a": "1", "n": "2", "_v": "2"},
                                                       {"a": "1", "_v": "1"}, {"_v": "1"}]


def test_a_commit_after_the_servers_scripts_were_flushed_loads_its_script_again(any_bus):
    """A server restarted without persistence, or SCRIPT FLUSH, forgets the script: the commit's
    EVALSHA meets NOSCRIPT and loads it again, once."""
    assert any_bus.commit("", [Commit(ops=[SetFields("h", {"a": "1"})])]) == [Outcome.APPLIED]
    any_bus.client.script_flush()
    assert any_bus.commit("", [Commit(ops=[SetFields("h", {"a": "2"})])]) == [Outcome.APPLIED]
    assert any_bus.read_hashes(["h"]) == [{"a": "2", "_v": "2"}]


def test_claim_stale_takes_over_idle_entries_with_their_delivery_count(any_bus):
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    any_bus.read_new("g", "dead", [S], 10, 10)
    assert any_bus.claim_stale("g", "alive", [S], min_idle_ms=60_000, count=10) == []
    claimed = any_bus.claim_stale("g", "alive", [S], min_idle_ms=0, count=10)
    assert len(claimed) == 1 and claimed[0].deliveries == 2
    assert any_bus.read_own_pending("g", "alive", {S: "0"}, 10)[0].entry_id == claimed[0].entry_id


def test_allocate_ids_hands_out_fresh_ranges(any_bus):
    assert list(any_bus.allocate_ids("seq", 3)) == [1, 2, 3]
    assert list(any_bus.allocate_ids("seq", 2)) == [4, 5]


def test_retry_due_claims_only_entries_whose_backoff_has_passed(any_bus):
    publish(any_bus, 2)
    any_bus.ensure_groups("g", [S])
    first, second = any_bus.read_new("g", "c1", [S], 10, 10)
    any_bus.client.xclaim(S, "g", "c1", 0, [second.entry_id], idle=10_000)   # idle 10 s
    due = any_bus.retry_due("g", "c1", [S], lambda n: 5_000 * n, 10)
    assert [(d.entry_id, d.deliveries) for d in due] == [(second.entry_id, 3)]


def test_retry_due_waits_longer_after_each_delivery(any_bus):
    """An entry delivered twice waits backoff(2), not backoff(1): idle past the first step but
    short of the second, it is not due yet."""
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    (entry,) = any_bus.read_new("g", "c1", [S], 10, 10)
    any_bus.client.xclaim(S, "g", "c1", 0, [entry.entry_id], idle=7_000)     # 2nd delivery, 7 s ago
    assert any_bus.retry_due("g", "c1", [S], lambda n: 5_000 * n, 10) == []
    # with a backoff whose second step has passed, it is due (and delivered a third time)
    assert [d.deliveries for d in any_bus.retry_due("g", "c1", [S], lambda n: 3_000 * n, 10)] == [3]


def test_forget_idle_consumers_keeps_any_consumer_holding_entries(any_bus):
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    any_bus.read_new("g", "holder", [S], 10, 10)
    any_bus.client.xgroup_createconsumer(S, "g", "empty")
    assert any_bus.forget_idle_consumers("g", [S], min_idle_ms=0) == [f"{S}/empty"]
    assert [c["name"] for c in any_bus.client.xinfo_consumers(S, "g")] == ["holder"]


def test_forget_consumer_script_itself_refuses_a_consumer_holding_entries(any_bus):
    """The script's own guard, without the Python pre-filter: between XINFO and the script the
    consumer may have read, and DELCONSUMER would drop what it holds."""
    forget = any_bus.client.register_script(
        resources.files("choreo.bus").joinpath("forget_consumer.lua").read_text())
    publish(any_bus, 1)
    any_bus.ensure_groups("g", [S])
    any_bus.read_new("g", "holder", [S], 10, 10)
    any_bus.client.xgroup_createconsumer(S, "g", "empty")
    assert forget(keys=[S], args=["g", "holder"]) == 0
    assert forget(keys=[S], args=["g", "empty"]) == 1
    assert [(c["name"], c["pending"]) for c in any_bus.client.xinfo_consumers(S, "g")] == [("holder", 1)]
    assert any_bus.client.xpending(S, "g")["pending"] == 1


def test_renew_resets_idle_only_for_entries_still_ours(real_bus):
    """Against a real server only: fakeredis counts XCLAIM JUSTID as a delivery, Redis does not."""
    publish(real_bus, 2)
    real_bus.ensure_groups("g", [S])
    mine, stolen = real_bus.read_new("g", "c1", [S], 10, 10)
    # Both idle for a minute (set, not waited for); then another consumer takes one over.
    real_bus.client.xclaim(S, "g", "c1", 0, [mine.entry_id], idle=60_000, justid=True)
    real_bus.client.xclaim(S, "g", "c2", 0, [stolen.entry_id], idle=60_000)
    assert real_bus.renew("g", "c1", [mine, stolen]) == 1
    pending = {p["message_id"]: p for p in real_bus.client.xpending_range(S, "g", "-", "+", 10)}
    assert pending[mine.entry_id]["consumer"] == "c1" and pending[mine.entry_id]["times_delivered"] == 1
    assert pending[mine.entry_id]["time_since_delivered"] < 30_000          # reset, not a minute
    assert pending[stolen.entry_id]["consumer"] == "c2"
    assert pending[stolen.entry_id]["time_since_delivered"] >= 60_000       # not ours: untouched


def test_a_commit_redis_would_refuse_applies_nothing_and_stops_the_batch(any_bus):
    any_bus.client.set("not-a-list", "x")
    any_bus.client.hset("counters", "n", "abc")
    first = Commit(ops=[SetFields("first", {"a": "1"})])
    refused = Commit(ops=[SetFields("h", {"a": "1"}), Append("not-a-list", "v")],
                     seen="seen:g", seen_id="e", seen_ttl_s=60)
    later = Commit(ops=[SetFields("later", {"a": "1"})])
    assert any_bus.commit("", [first, refused, later]) == \
        [Outcome.APPLIED, Outcome.REFUSED, Outcome.CONFLICT]
    assert "not-a-list holds a string, not a list" in refused.refusal
    assert any_bus.read_hashes(["first", "h", "later"]) == [{"a": "1", "_v": "1"}, {}, {}]
    assert not any_bus.client.exists("seen:g")
    bad_counter = Commit(ops=[Count("counters", "n", 1)])
    too_big = Commit(ops=[AddTo("big", "n", 2 ** 60)])
    assert any_bus.commit("", [bad_counter]) == [Outcome.REFUSED] and "not an integer" in bad_counter.refusal
    assert any_bus.commit("", [too_big]) == [Outcome.REFUSED] and "range" in too_big.refusal
    for stored in ("007", "-0"):               # hand-edited: Redis's HINCRBY refuses both
        any_bus.client.hset("counters", "n", stored)
        zeros = Commit(ops=[SetFields("z", {"a": "1"}), Count("counters", "n", 1)])
        assert any_bus.commit("", [zeros]) == [Outcome.REFUSED] and "not an integer" in zeros.refusal
        assert not any_bus.client.exists("z")


def test_counters_read_once_a_batch_still_see_every_write_of_the_batch(any_bus):
    """commit.lua reads an integer field once per call and remembers it: a later commit of the
    same batch is checked against what the earlier ones left, not what the first read said."""
    near = 2 ** 50 - 1
    any_bus.client.hset("totals", mapping={"n": near, "m": "1"})
    up = Commit(ops=[Count("totals", "n", 2)])
    over = Commit(ops=[Count("totals", "n", 2)])        # from near + 2 > 2**50: out of range
    assert any_bus.commit("", [up, over]) == [Outcome.APPLIED, Outcome.REFUSED]
    assert "range" in over.refusal
    spoil = Commit(ops=[SetFields("totals", {"m": "abc"})])    # an HSET may store anything
    add = Commit(ops=[Count("totals", "m", 1)])
    assert any_bus.commit("", [Commit(ops=[Count("totals", "m", 1)]), spoil, add]) == \
        [Outcome.APPLIED, Outcome.APPLIED, Outcome.REFUSED]
    assert "not an integer" in add.refusal
    assert any_bus.read_hashes(["totals"])[0] | {"_v": "?"} == {"n": str(near + 2), "m": "abc", "_v": "?"}


def test_a_checked_key_is_known_to_be_a_hash_or_absent_and_nothing_more(any_bus):
    """Its version read (HGET) tells hash-or-absent; a list write to it still asks Redis."""
    both = Commit(checks={"fresh": "0"}, ops=[SetFields("fresh", {"a": "1"})])
    assert any_bus.commit("", [both]) == [Outcome.APPLIED]
    listy = Commit(checks={"empty": "0"}, ops=[Append("empty", "v")])
    assert any_bus.commit("", [listy]) == [Outcome.APPLIED]
    assert any_bus.client.lrange("empty", 0, -1) == ["v"]
    mixed = Commit(checks={"fresh": "1"}, ops=[Append("fresh", "v")])
    assert any_bus.commit("", [mixed]) == [Outcome.REFUSED] and "fresh holds a hash" in mixed.refusal


def test_delivery_counts_are_exact_when_other_pending_entries_interleave(any_bus):
    publish(any_bus, 4)
    any_bus.ensure_groups("g", [S])
    a, b, c, d = any_bus.read_new("g", "dead", [S], 10, 10)
    any_bus.client.xclaim(S, "g", "alive", 0, [b.entry_id, d.entry_id])   # alive holds b and d
    claimed = any_bus.claim_stale("g", "alive", [S], min_idle_ms=0, count=10)
    assert sorted(x.entry_id for x in claimed) == sorted([a.entry_id, b.entry_id, c.entry_id, d.entry_id])
    counts = {x.entry_id: x.deliveries for x in claimed}
    assert counts[a.entry_id] == counts[c.entry_id] == 2 and counts[b.entry_id] == 3


def test_an_entry_that_is_not_utf8_is_handed_over_marked_not_dropped(real_bus):
    real_bus.ensure_groups("g", [S])
    raw = real_bus.raw
    raw.xadd(S, {b"id": b"\xff\xfe", b"type": b"OrderCreated"})
    publish(real_bus, 1)
    bad, good = real_bus.read_new("g", "c1", [S], 10, 10)
    assert bad.error.startswith("not UTF-8") and "\\xff" in bad.fields["id"]
    assert good.error == "" and good.fields["type"] == "OrderCreated"


def test_a_key_number_not_in_keys_is_refused_before_any_write(any_bus):
    """ARGV names keys by their place in KEYS: a place that names none (a bad encoding) refuses
    the commit before its first write, like any other write Redis would refuse."""
    class Outside:
        def words(self, key) -> tuple:
            return ("HSET", 99, "a", "1")
    bad = Commit(ops=[SetFields("h", {"a": "1"}), Outside()])
    assert any_bus.commit("", [bad]) == [Outcome.REFUSED] and "is not in KEYS" in bad.refusal
    assert any_bus.read_hashes(["h"]) == [{}]


def test_no_dedup_id_is_a_key_place_of_zero_however_it_is_written(any_bus):
    """A key place is read as a number everywhere ("00" is 0, no key): so is the one that says
    a commit keeps no dedup id, whose id and time then are not in ARGV to be read."""
    from choreo.bus.redis_streams import encode_batch
    KEYS, argv = encode_batch("", [Commit(ops=[SetFields("h", {"a": "1"})]), Commit(ops=[AddTo("h", "n", 2)])])
    assert argv[5] == "0"                       # group, n, 0, ack stream#, ack id, seen#
    argv[5] = "00"
    script = resources.files("choreo.bus").joinpath("commit.lua").read_text()
    assert any_bus.client.eval(script, len(KEYS), *KEYS, *argv) == [1, 1]
    assert any_bus.read_hashes(["h"]) == [{"a": "1", "n": "2", "_v": "2"}]


def test_a_hash_a_commit_writes_then_expires_at_once_is_gone_not_remade_by_its_version(any_bus):
    """The version bump comes once, after the commit's ops: an EXPIRE 0 (delete) among them must
    not leave a hash holding only `_v`, nor fail a later list write to the same key."""
    gone = Commit(ops=[SetFields("k", {"a": "1"}), Expire("k", 0)])
    assert any_bus.commit("", [gone]) == [Outcome.APPLIED]
    assert not any_bus.client.exists("k")


def test_a_hash_deleted_and_written_again_in_one_commit_is_the_new_one_with_one_bump(real_bus):
    """(Real Redis deletes at EXPIRE 0; fakeredis keeps the key's expiry for the later write.)"""
    again = Commit(ops=[SetFields("j", {"a": "1"}), Expire("j", 0), SetFields("j", {"b": "2"})])
    assert real_bus.commit("", [again]) == [Outcome.APPLIED]
    assert real_bus.read_hashes(["j"]) == [{"b": "2", "_v": "1"}]


def test_dropping_fields_bumps_the_version_so_a_commit_that_read_them_conflicts(any_bus):
    """A settled record sheds fields (DropFields, HDEL): a versioned write like SetFields, so a
    racing commit that read the hash before is refused, and a counter it held is read afresh."""
    assert any_bus.commit("", [Commit(ops=[SetFields("r", {"status": "RESERVED", "lines": "[1]", "n": "5"})])]) \
        == [Outcome.APPLIED]
    settle = Commit(checks={"r": "1"}, ops=[DropFields("r", ("lines",))])
    racing = Commit(checks={"r": "1"}, ops=[SetFields("r", {"status": "RELEASED"})])
    assert any_bus.commit("", [settle, racing]) == [Outcome.APPLIED, Outcome.CONFLICT]
    assert any_bus.read_hashes(["r"]) == [{"status": "RESERVED", "n": "5", "_v": "2"}]
    counted = Commit(ops=[AddTo("r", "n", 1), DropFields("r", ("n",)), AddTo("r", "n", 2)])
    assert any_bus.commit("", [counted]) == [Outcome.APPLIED]
    assert any_bus.read_hashes(["r"]) == [{"status": "RESERVED", "n": "2", "_v": "3"}]
    on_a_list = Commit(ops=[Append("l", "x"), DropFields("l", ("a",))])
    assert any_bus.commit("", [on_a_list]) == [Outcome.REFUSED] and "holds a list" in on_a_list.refusal




def test_versions_a_batch_writes_are_what_its_later_commits_check(any_bus):
    """Every commit bumps each hash it wrote once, whatever ops wrote it, and a later commit of
    the same batch checks against exactly that."""
    c = any_bus.client
    any_bus.commit("", [Commit(ops=[SetFields("v", {"a": "1"})])])            # v._v is 1
    batch = [Commit(checks={"v": "1"}, ops=[SetFields("v", {"a": "2"}), AddTo("v", "n", 5)]),
             Commit(checks={"v": "2"}, ops=[AddTo("v", "n", 1), SetFields("v", {"b": "x"})]),
             Commit(checks={"v": "3"}, ops=[DropFields("v", ("b",))]),
             Commit(checks={"v": "4"}, ops=[SetFields("v", {"c": "1"})]),
             Commit(checks={"v": "5"}, ops=[SetFields("v", {"d": "1"})])]
    assert any_bus.commit("", batch) == [Outcome.APPLIED] * 5
    assert c.hgetall("v") == {"a": "2", "n": "6", "c": "1", "d": "1", "_v": "6"}
    stale = [Commit(checks={"v": "6"}, ops=[SetFields("v", {"e": "1"})]),
             Commit(checks={"v": "6"}, ops=[SetFields("v", {"f": "1"})])]   # read before the first
    assert any_bus.commit("", stale) == [Outcome.APPLIED, Outcome.CONFLICT]
    assert c.hget("v", "_v") == "7" and not c.hexists("v", "f")


def test_a_hash_a_batch_deletes_is_version_0_to_its_later_commits(real_bus):
    """(Real Redis: fakeredis keeps an EXPIRE 0 key's expiry for the later write.)"""
    batch = [Commit(checks={"w": "0"}, ops=[SetFields("w", {"a": "1"}), Expire("w", 0)]),
             Commit(checks={"w": "0"}, ops=[SetFields("w", {"a": "2"})]),
             Commit(checks={"w": "1"}, ops=[SetFields("w", {"b": "3"}), Expire("w", 0),
                                            SetFields("w", {"c": "4"})]),
             Commit(checks={"w": "1"}, ops=[AddTo("w", "n", 2)])]
    assert real_bus.commit("", batch) == [Outcome.APPLIED] * 4
    assert real_bus.client.hgetall("w") == {"c": "4", "n": "2", "_v": "2"}


# -- the batch's encoding: KEYS once each, ARGV words (bus.redis_streams.encode_batch) ------------

def test_an_empty_batch_is_three_words_and_the_script_answers_nothing(any_bus):
    from choreo.bus.redis_streams import encode_batch
    assert encode_batch("g", []) == ([], ["g", "0", "0"])
    assert any_bus._commit(keys=[], args=["g", 0, 0]) == []
    assert any_bus.commit("g", []) == []


def test_a_batch_names_each_key_by_its_place_in_keys(any_bus):
    """Keys go to KEYS once each (Cluster routes by them); ARGV names them by place, and the
    script parses each distinct number word once per call, however often the batch repeats it."""
    from choreo.bus.redis_streams import encode_batch
    one = Commit(checks={"h": "3"}, ack=("s", "1-1"), seen="seen:g", seen_id="e1", seen_ttl_s=60,
                 ops=[AddTo("h", "n", -2), Publish("s2", {"a": "1"}, trace="t", max_len=5),
                      Expire("h", 30)])
    two = Commit(ops=[SetFields("h", {"f": "v"})])
    keys_, argv = encode_batch("g", [one, two])
    assert keys_ == ["s", "seen:g", "h", "s2", "t"]
    # Every word a str (hiredis packs a str at half an int's cost): the same bytes on the wire.
    assert argv == ["g", "2", "0",
                    "1", "1-1", "2", "e1", "60", "1", "3", "3",
                    "3", "HINCRBY", "3", "3", "n", "-2", "PUBLISH", "5", "4", "5", "5", "a", "1",
                    "EXPIRE", "2", "3", "30",
                    "0", "", "0", "0",          # no dedup id: neither it nor its time is sent
                    "1", "HSET", "3", "3", "f", "v"]


def test_text_of_any_script_and_escape_arrives_byte_for_byte(any_bus):
    """Accents, emoji, other scripts, quotes, backslashes, control characters and NUL are stored
    exactly as given, in fields, values, keys and events."""
    odd = 'é ü 中文 🚀 "quoted" back\\slash \x00 nul \x01 \n\t \u2028 \ud7ff'
    key = f"h:{odd}"
    c = Commit(ops=[SetFields(key, {odd: odd, "plain": "x"}), Publish(S, {"v": odd}, trace=f"t:{odd}")])
    assert any_bus.commit("", [c]) == [Outcome.APPLIED]
    assert any_bus.read_hashes([key]) == [{odd: odd, "plain": "x", "_v": "1"}]
    ((_, fields),) = any_bus.client.xrange(S)
    assert fields["v"] == odd
    assert any_bus.client.hkeys(f"t:{odd}")[0].startswith(S + " ")


def test_integers_travel_exactly_up_to_the_safe_range_and_are_refused_past_it(any_bus):
    """2^50 is added exactly; an amount one past it is refused, as is one far past int64."""
    edge = 2 ** 50
    assert any_bus.commit("", [Commit(ops=[AddTo("n", "up", edge), Count("n", "down", -edge)])]) == \
        [Outcome.APPLIED]
    assert any_bus.read_hashes(["n"]) == [{"up": str(edge), "down": str(-edge), "_v": "1"}]
    for amount in (2 ** 50 + 1, -(2 ** 50) - 1, 2 ** 64 + 1, -(2 ** 70)):
        far = Commit(ops=[Count("m", "y", 1), Count("m", "x", amount)])
        assert any_bus.commit("", [far]) == [Outcome.REFUSED] and "range" in far.refusal, amount
    assert not any_bus.client.exists("m")
    score = 1_700_000_000.123456
    from choreo.bus.ops import Index
    assert any_bus.commit("", [Commit(ops=[Index("z", score, "m")])]) == [Outcome.APPLIED]
    assert any_bus.client.zscore("z", "m") == score
