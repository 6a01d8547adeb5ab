-- Apply a batch of commits in order; each is all-or-nothing. See bus/contract.py.
-- KEYS: every key the batch touches, each once. ARGV names a key by its place in KEYS (0: none):
-- Redis Cluster routes a script by its KEYS, and ACL key patterns check only KEYS.
-- ARGV: group, n, 0, then per commit:
--   ack_stream#, ack_id, seen_key#, [seen_id, seen_ttl,] n_checks, (key#, expected_v)*, n_ops, (op, n_args, args*)*
-- where seen_id and seen_ttl are there only when seen_key# is not 0 (most commits keep no id),
-- where an op's key (a PUBLISH's stream and trace) is a key# too. An expected_v "!<f> <f>..." checks
-- instead that the hash holds none of those fields: a bucket of settled records (FILE) without the
-- records a handler found absent, which a commit that filed one meanwhile would otherwise hide.
-- Explaining (ARGV[3] = m > 0, no KEYS; after Redis refused the batch's EVALSHA for a key the user
-- may not touch, NOPERM naming no key): the m key names follow in ARGV, and the script only asks
-- the ACL (acl_check_cmd) the questions it asks before writing, reading and writing no key. It
-- returns {commit number, NOPERM reason} for the first refusal, or {} if it finds none.
-- Returns one status per commit: 1 applied, 0 duplicate (acked only), -1 conflict (untouched),
-- or a string, the reason Redis would refuse one of its writes (untouched, not acked); one that
-- starts with NOPERM says the calling user lacks a permission (bus.acl: the worker stops).
-- Redis does not roll a script back when a command fails halfway, so every write of a commit is
-- checked (key types, integer fields and ranges) before the first one is made.
-- The first conflict or refusal stops the batch: later commits may have read what this one would
-- have written, so they come back -1.
-- Dedup, two guards and no key per entry: an entry once acknowledged cannot be acknowledged again,
-- so effects are applied only when the commit's own XACK returns 1 (a redelivery of the same entry
-- changes nothing); and the same event id arriving as a new entry (a producer's retry, a replay)
-- finds its id in seen_key, one sorted set per service of event ids scored by the second they may
-- be forgotten (ZADD NX: check and set at once). Members past their time are removed on the first
-- use of the set in each call, so it holds about seen_ttl of ids and no more.
-- An event published by a commit that cannot apply twice (guarded, below) carries `once` 1: it
-- reaches its stream once, so its consumers pass no seen id for it (workers.handling) and the
-- sets hold only ids of events published otherwise. A replay is addressed to its letter's group
-- (`for`, bus.dead_letters.republish) and carries no `once`.
local unpack = unpack or table.unpack
-- Globals the loops below use, as locals: each global read is a table lookup in Lua 5.1.
local redis, string, math, type, tostring, tonumber, pairs, ipairs =
  redis, string, math, type, tostring, tonumber, pairs, ipairs
-- What tonumber says of an ARGV word, parsed once per distinct word in a call: a batch names the
-- same few key places, counts and amounts thousands of times, and each tonumber of a string costs
-- two strtod calls. A word already parsed is one table lookup (false: not a number).
local number = setmetatable({}, { __index = function(parsed, word)
  if word == nil then return false end
  local value = tonumber(word) or false
  parsed[word] = value
  return value
end })
local group = ARGV[1]
local n = tonumber(ARGV[2])
local explaining = tonumber(ARGV[3])
local K = KEYS
local i = 4
if explaining > 0 then
  K = {}
  for k = 1, explaining do K[k] = ARGV[3 + k] end
  i = 4 + explaining
end
local out = {}
-- Reused by every commit, not made anew for each (a table made costs more than emptying one):
local checked = {}      -- the hashes a commit checks, in order (n_checks of them)
local bumped = {}       -- the hashes an applied commit wrote (apply), emptied as their versions go up
local stopped = false
-- The ops bus.ops writes, by the type of key each needs. (No SET: its options are not checked,
-- and Redis could refuse one halfway.)
local HOLDS = { HSET = 'hash', HDEL = 'hash', HINCRBY = 'hash', COUNT = 'hash', FILE = 'hash',
                RPUSH = 'list', ZADD = 'zset' }
local AS = { COUNT = 'HINCRBY', FILE = 'HSET' }    -- the command an op runs, where it is not its name
-- What the ACL is asked about an op's command after its key: words of the right number, not the
-- op's own (a user's rules name commands and key patterns, never other arguments).
local ASKED_WITH = { HSET = { 'f', 'v' }, HDEL = { 'f' }, HINCRBY = { 'f', '1' }, RPUSH = { 'x' },
                     ZADD = { '1', 'm' } }
local LIMIT = 2 ^ 50    -- counters stay exact in Lua numbers and far inside Redis's int64

-- What a test says of a word, asked once per distinct word in a call: a batch repeats the same
-- few amounts and expiries hundreds of times, and a pattern match is a C call each. (nil: false.)
local function remembered(test)
  return setmetatable({}, { __index = function(said, word)
    if word == nil then return false end
    local value = test(word)
    said[word] = value
    return value
  end })
end
-- Whether Redis reads the word as an integer (string2ll): no leading zeros, no '-0', no '+'.
local whole = remembered(function(word)
  return word == '0' or (type(word) == 'string' and string.match(word, '^-?[1-9]%d*$') ~= nil)
end)
-- Whole seconds below 10^11, digits only (an expiry); all zeros (an EXPIRE that deletes).
local seconds_word = remembered(function(word)
  return string.match(word, '^%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') ~= nil
end)
local zeros = remembered(function(word) return string.match(word, '^0+$') ~= nil end)
-- Whether Redis reads the word as a score (string2d): what strtod reads whole, with no space
-- around it nor NUL in it (Lua's tonumber stops at a NUL and takes what came before), not NaN,
-- and not out of range (an overflow to infinity or an underflow to zero). A few words Redis
-- takes are refused here too (a subnormal, a hex zero): refused is safe, halfway is not.
local score_word = remembered(function(word)
  local s = tonumber(word)
  if s == nil or s ~= s or string.find(word, '[%s%z]') then return false end
  if s == math.huge or s == -math.huge then
    local bare = string.lower(string.gsub(word, '^[-+]', ''))
    return bare == 'inf' or bare == 'infinity'
  end
  if s == 0 then        -- written as zero (its digits all zeros), not a small number underflowed
    return (string.match(word, '^[-+]?0*%.?0*$') or string.match(word, '^[-+]?0*%.?0*[eE][-+]?%d+$')) ~= nil
  end
  return math.abs(s) >= 2.2250738585072014e-308
end)
local now = tonumber(redis.call('TIME')[1])
local forgotten = {}    -- seen keys already rid of expired ids in this call

-- Whether the calling user may run a command on a key, asked before anything is written: a write
-- refused halfway would leave the commit half-applied. (fakeredis has no ACLs, and no
-- acl_check_cmd.) Asked once per command and key per call: every command here takes one key, its
-- first argument, and the user's rules (bus.acl: commands on key patterns) cannot change while a
-- script runs, so the answer holds for the rest of the batch (answers[command][key], false: allowed).
-- Never inferred from another key's answer: no key proves a user may touch every key (a pattern
-- may name exactly that key; an empty pattern, `~`, allows the empty key and no other).
local answers = {}
local function denied(command, key, ...)
  local by_key = answers[command]
  local no = by_key and by_key[key or '']
  if no == nil then
    no = false
    if redis.acl_check_cmd and not redis.acl_check_cmd(command, key, ...) then
      no = 'NOPERM this user may not run ' .. command .. ' on ' .. tostring(key)
    end
    answers[command] = by_key or {}
    answers[command][key or ''] = no
  end
  return no or nil
end

-- Key types, asked of Redis once per key per call: `known` holds what Redis said or what this
-- script's own writes made since (nothing else writes while a script runs); `planned` the types
-- the commit being checked will give the keys it writes, so two of its writes that disagree on a
-- key's type are refused before the first of them is made.
-- A key whose version a commit checked (HGET _v, which Redis refuses on any other type) is known
-- to be a hash or absent, 'hash?': hash writes to it need no TYPE.
local known, planned = {}, {}
-- Integer fields of hashes as this call last read or wrote them (counters[key][field]), so a field
-- a batch adjusts many times (stock, totals) is read and checked once per call, not once per op.
-- An HSET may store anything in a field: it forgets its hash's counters.
local counters = {}
-- Expiries this call set (expiring[key] = seconds), on keys that existed then and still do: the
-- script runs at one instant, so the same EXPIRE again would change nothing.
local expiring = {}

-- The key a key# names ('' for 0); nil for one not in KEYS.
local function key_at(word)
  local k = number[word]
  if k == 0 then return '' end
  return k and K[k] or nil
end

-- The key's type: what this call knows of it, or else Redis's answer (remembered); nil and a
-- NOPERM reason if the user may not ask.
local function type_of(key)
  local t = planned[key] or known[key]
  if t == nil then
    local no = denied('TYPE', key)
    if no then return nil, no end
    t = redis.call('TYPE', key)
    t = type(t) == 'table' and t.ok or t
    known[key] = t
  end
  return t
end

local function wrong_type(key, want)
  if explaining > 0 then return nil end      -- ACL questions only
  local t = planned[key] or known[key]
  if t == nil or (t == 'hash?' and want ~= 'hash') then    -- unknown, or a hash or absent: ask
    local no
    known[key] = nil
    t, no = type_of(key)
    if no then return no end
  end
  if t ~= 'none' and t ~= want and not (t == 'hash?' and want == 'hash') then
    return key .. ' holds a ' .. t .. ', not a ' .. want
  end
  planned[key] = want
end

-- A trace is a hash whose fields are "<stream> <id>", one per event (values empty): one HSET a
-- publish, and a small hash is a listpack of about 310 bytes for an order's four events, where a
-- list (a quicklist) takes about 410. A trace an earlier version made as a list is still
-- appended to as one (RPUSH).
local function trace_is_list(key)
  return (planned[key] or known[key]) == 'list'
end

-- Explaining asks no TYPE (it touches no key), so it asks what a hash trace needs, HSET; the
-- real run asks RPUSH of a list trace. (The batch's commits still go through the real run,
-- which asks again: this only chooses which missing permission the worker names.)
local function trace_refusal(key)
  local t, no = 'hash', nil
  if explaining == 0 then t, no = type_of(key) end
  if no then return no end
  if t == 'list' then
    return denied('RPUSH', key, 'x') or wrong_type(key, 'list')
  end
  return denied('HSET', key, 'f', '') or wrong_type(key, 'hash')
end

-- Whether a stream may run out of entry ids within this call: one whose last id is in the last
-- millisecond there is (an XADD with such an explicit id: no clock gets there) refuses an XADD
-- once its last id is the largest, and that XADD would come after the commit's XACK and other
-- writes. Refused from that millisecond on, not only once full: a stream one id short would take
-- this call's first XADD and refuse its next, which the answer remembered for the call would not
-- see. Asked once per stream per call (XINFO STREAM: nothing cheaper says the last id made),
-- where the stream exists; false: it may take them. Explaining asks only the ACL.
local LAST_MS = '18446744073709551615-'     -- of bus.contract.LAST_ENTRY_ID
local full = {}
local function exhausted(key)
  local said = full[key]
  if said == nil then
    said = false
    if redis.acl_check_cmd and not redis.acl_check_cmd('XINFO', 'STREAM', key) then
      said = 'NOPERM this user may not run XINFO STREAM on ' .. tostring(key)
    elseif explaining == 0 and known[key] ~= 'none' then
      local info = redis.call('XINFO', 'STREAM', key)
      for f = 1, #info - 1, 2 do
        if info[f] == 'last-generated-id' then
          if string.sub(info[f + 1], 1, #LAST_MS) == LAST_MS then
            said = key .. ' has used up its entry ids (its last is ' .. info[f + 1] .. ', in the last millisecond there is): it takes no event'
          end
          break
        end
      end
    end
    full[key] = said
  end
  return said or nil
end

-- A commit's ops as places in ARGV, not a table each (a batch has ~30 an order): op o is named
-- op_name[o]; its n = op_n[o] arguments are ARGV[op_at[o]] .. ARGV[op_at[o] + n - 1], the first
-- (a key#) read as the key op_key[o], a PUBLISH's second as its trace op_trace[o]; op_list[o]: a
-- PUBLISH's trace is a list (earlier versions), as its checks found it. Reused by every commit.
local op_name, op_at, op_n, op_key, op_trace, op_list = {}, {}, {}, {}, {}, {}

-- Why Redis would refuse op o of the commit being checked (nil: it would not).
local function refusal(o)
  local op, at, n, key = op_name[o], op_at[o], op_n[o], op_key[o]
  if op == 'PUBLISH' then
    local no = denied('XADD', key, '*', 'f', 'v')
    if no then return no end
    -- Checked to the letter: the ack and the dedup id are written before the effects, so an
    -- effect Redis refuses halfway would be lost (bounded digits, fields in pairs).
    if n < 5 or (n - 3) % 2 ~= 0 then
      return 'an event for ' .. key .. ' needs fields in name, value pairs'
    end
    local max_len = ARGV[at + 2]
    if max_len ~= '' and not string.match(max_len, '^%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') then
      return 'max length ' .. max_len .. ' of ' .. key .. ' is not a whole number below 10^12'
    end
    local trace = op_trace[o]
    return wrong_type(key, 'stream') or (trace ~= '' and trace_refusal(trace)) or exhausted(key) or nil
  end
  if op == 'EXPIRE' then     -- (key, seconds): a settled key's retention, see workers.unit_of_work
    local seconds = ARGV[at + 1]
    if n ~= 2 or not seconds_word[seconds] then
      return 'expiry ' .. tostring(n == 2 and seconds or nil) .. ' of ' .. key .. ' is not whole seconds below 10^11'
    end
    -- An EXPIRE of 0 would delete the key: the types remembered for it are forgotten, so the
    -- next write to it asks Redis again. (Workers' expiries are never 0: retention_s >= 1.)
    if zeros[seconds] then
      known[key], planned[key], counters[key] = nil, nil, nil
    end
    return denied('EXPIRE', key, seconds)
  end
  if HOLDS[op] == nil then return 'unknown op ' .. tostring(op) end
  if op == 'HSET' and (n < 3 or n % 2 ~= 1) then
    return 'HSET ' .. key .. ' needs fields in name, value pairs'
  end
  if op == 'FILE' and n ~= 3 then
    return 'FILE ' .. key .. ' needs one field and its value'
  end
  if (op == 'HINCRBY' or op == 'COUNT') and n > 3 then
    return op .. ' ' .. key .. ' takes one field and one amount'
  end
  if op == 'ZADD' and n ~= 3 then return 'ZADD ' .. key .. ' needs a score and a member' end
  if op == 'ZADD' and not score_word[ARGV[at + 1]] then
    return 'score ' .. ARGV[at + 1] .. ' for ' .. key .. ' is not a number Redis takes'
  end
  if op == 'RPUSH' and n < 2 then return 'RPUSH ' .. key .. ' needs a value' end
  if op == 'HDEL' then       -- never the version: the hash stays, and its version only grows
    if n < 2 then return 'HDEL ' .. key .. ' needs a field' end
    for f = at + 1, at + n - 1 do
      if ARGV[f] == '_v' then return 'HDEL ' .. key .. ' may not remove the version _v' end
    end
  end
  local command = AS[op] or op
  local no = denied(command, key, unpack(ASKED_WITH[command]))
  no = no or ((op == 'HSET' or op == 'HDEL' or op == 'HINCRBY') and denied('HINCRBY', key, '_v', '1'))
  if no then return no end
  local bad = wrong_type(key, HOLDS[op])
  if bad or (op ~= 'HINCRBY' and op ~= 'COUNT') or explaining > 0 then return bad end
  local field, amount = n >= 2 and ARGV[at + 1] or nil, n >= 3 and ARGV[at + 2] or nil
  if not whole[amount] then     -- Redis would refuse it halfway
    return 'amount ' .. tostring(amount) .. ' for ' .. key .. ' field ' .. tostring(field) .. ' is not an integer'
  end
  local fields = counters[key]
  local now = fields and fields[field]
  if now == nil then
    local unreadable = denied('HGET', key, field)
    if unreadable then return unreadable end
    local value = redis.call('HGET', key, field)
    if value and not whole[value] then
      return key .. ' field ' .. field .. ' is not an integer'
    end
    now = tonumber(value or '0')
    if math.abs(now) <= LIMIT then
      counters[key] = fields or {}
      counters[key][field] = now
    end
  end
  if math.abs(now) > LIMIT or math.abs(number[amount]) > LIMIT then
    return key .. ' field ' .. field .. ' would leave the safe integer range'
  end
end

-- bumped: the hashes this commit wrote, each of whose version goes up once when it is applied.
-- once: the commit cannot be applied a second time (guarded), so each event it publishes reaches
-- its stream once, and says so (`once` 1): its consumers need no dedup id for it.
local function apply(o, bumped, once)
  local op, at, n, key = op_name[o], op_at[o], op_n[o], op_key[o]
  if op == 'PUBLISH' then
    local trace, max_len = op_trace[o], ARGV[at + 2]
    -- `once` goes first: after the event's own fields it would need a table made of them.
    local id
    if once and max_len == '' then
      id = redis.call('XADD', key, '*', 'once', '1', unpack(ARGV, at + 3, at + n - 1))
    elseif once then
      id = redis.call('XADD', key, 'MAXLEN', max_len, '*', 'once', '1', unpack(ARGV, at + 3, at + n - 1))
    elseif max_len == '' then
      id = redis.call('XADD', key, '*', unpack(ARGV, at + 3, at + n - 1))
    else
      id = redis.call('XADD', key, 'MAXLEN', max_len, '*', unpack(ARGV, at + 3, at + n - 1))
    end
    if trace ~= '' then
      if op_list[o] then
        redis.call('RPUSH', trace, key .. ' ' .. id)
      else
        redis.call('HSET', trace, key .. ' ' .. id, '')
      end
    end
  elseif op == 'HINCRBY' or op == 'COUNT' then
    local field = ARGV[at + 1]
    local value = redis.call('HINCRBY', key, field, ARGV[at + 2])
    counters[key] = counters[key] or {}
    counters[key][field] = value
    if op == 'HINCRBY' then bumped[key] = true end
  elseif op == 'EXPIRE' then
    -- Any type of key; an absent one stays absent. Later writes keep the expiry (HSET, RPUSH).
    -- The same expiry again on a key that has it since this call set it is skipped: a bucket of
    -- settled records (FILE) gets one per record filed, ~50 a batch, each the same.
    local seconds = ARGV[at + 1]
    if expiring[key] ~= seconds then
      expiring[key] = redis.call('EXPIRE', key, seconds) == 1 and seconds or nil
    end
    if zeros[seconds] then    -- deleted: no version to bump (absent is version 0),
      bumped[key], counters[key] = nil, nil     -- unless a later write makes it again
      expiring[key] = nil
    end
  elseif op == 'FILE' then     -- a settled record into its bucket: no version, see HOLDS
    redis.call('HSET', key, ARGV[at + 1], ARGV[at + 2])
    counters[key] = nil
  else
    redis.call(op, key, unpack(ARGV, at + 1, at + n - 1))
    if op == 'HSET' or op == 'HDEL' then
      counters[key] = nil
      bumped[key] = true
    end
  end
end

-- Whether a commit, about to be applied, could never be applied again: its XACK returned 1 or
-- its id was new (acked_or_seen), or it writes a hash whose version it checked, so the same
-- commit sent again (a retry after a lost reply) finds that version moved and is refused. A hash
-- the commit also deletes (EXPIRE 0) proves nothing: made again, it may carry the same version.
local function guarded(acked_or_seen, checked, n_checks, n_ops)
  if acked_or_seen then return true end
  local written, deleted = {}, {}
  for o = 1, n_ops do
    local op = op_name[o]
    if op == 'HSET' or op == 'HDEL' or op == 'HINCRBY' or op == 'FILE' then
      written[op_key[o]] = true
    elseif op == 'EXPIRE' and zeros[ARGV[op_at[o] + 1]] then
      deleted[op_key[o]] = true
    end
  end
  for k = 1, n_checks do
    local key = checked[k]
    if written[key] and not deleted[key] then return true end
  end
  return false
end

for c = 1, n do
  local ack_stream, ack_id, seen = key_at(ARGV[i]), ARGV[i + 1], key_at(ARGV[i + 2])
  local seen_id, seen_until = '', now
  if number[ARGV[i + 2]] ~= 0 then      -- a dedup id, and how long it is kept ('0', or '00')
    seen_id, seen_until = ARGV[i + 3], now + number[ARGV[i + 4]]
    i = i + 2
  end
  local n_checks = number[ARGV[i + 3]]
  i = i + 4
  local status = 1
  if stopped and explaining == 0 then status = -1 end
  for k = 1, n_checks do
    checked[k] = key_at(ARGV[i + 2 * k - 2])
    if status == 1 and (checked[k] == nil or checked[k] == '') then
      status = 'key# ' .. ARGV[i + 2 * k - 2] .. ' is not in KEYS'
    end
  end
  if status == 1 and (ack_stream == nil or seen == nil) then status = 'the ack stream or seen set is not in KEYS' end
  -- What this commit reads and acknowledges, asked first: the reads below run before any write.
  for k = 1, n_checks do     -- (a bucket's fields are asked with HGET too)
    if status == 1 then status = denied('HGET', checked[k], '_v') or 1 end
  end
  if next(planned) ~= nil then planned = {} end     -- left by a commit not applied (else emptied)
  if status == 1 and seen ~= '' then
    status = denied('ZADD', seen, 'NX', '1', seen_id) or denied('ZREMRANGEBYSCORE', seen, '-inf', '1')
      or wrong_type(seen, 'zset') or 1
  end
  if status == 1 and ack_stream ~= '' then status = denied('XACK', ack_stream, group, ack_id) or 1 end
  for k = 1, n_checks do
    if status == 1 and explaining == 0 then
      local expected = ARGV[i + 1]
      if string.byte(expected) == 33 then      -- "!": none of these fields (a bucket, above)
        for field in string.gmatch(string.sub(expected, 2), '%S+') do
          if redis.call('HGET', checked[k], field) then status = -1 end
        end
      elseif (redis.call('HGET', checked[k], '_v') or '0') ~= expected then
        status = -1
      end
      known[checked[k]] = known[checked[k]] or 'hash?'
    end
    i = i + 2
  end
  local n_ops = number[ARGV[i]]
  for o = 1, n_ops do
    local op, n_args, at = ARGV[i + 1], number[ARGV[i + 2]], i + 3
    op_name[o], op_n[o], op_at[o] = op, n_args, at
    -- The op's keys, from key# to name: a PUBLISH's stream and trace, every other op's first.
    for a = 1, (op == 'PUBLISH' and 2 or 1) do
      local word = a <= n_args and ARGV[at + a - 1] or nil
      local name = key_at(word)
      if name == nil or (a == 1 and name == '') then
        if status == 1 then status = 'key# ' .. tostring(word) .. ' of ' .. op .. ' is not in KEYS' end
      end
      if a == 1 then op_key[o] = name else op_trace[o] = name end
    end
    i = i + 2 + n_args
  end
  i = i + 1
  if status == 1 then
    for o = 1, n_ops do
      local why = refusal(o)
      if why then status = why; break end
      -- How the trace is written is decided here, with its checks: a later op of the commit (an
      -- EXPIRE 0) may make the checks forget the key's type before the apply.
      if op_name[o] == 'PUBLISH' and op_trace[o] ~= '' then op_list[o] = trace_is_list(op_trace[o]) end
    end
  end
  if explaining > 0 then
    if type(status) == 'string' and string.sub(status, 1, 6) == 'NOPERM' then return { c, status } end
    status = -1     -- asked, nothing found: nothing below runs for it
  end
  -- Decided: from here on every write is one Redis accepts. The ack, then the id, guard the effects.
  if status == 1 and ack_stream ~= '' and redis.call('XACK', ack_stream, group, ack_id) == 0 then
    status = 0
  end
  if status == 1 and seen ~= '' then
    if not forgotten[seen] then
      redis.call('ZREMRANGEBYSCORE', seen, '-inf', now)
      forgotten[seen] = true
    end
    if redis.call('ZADD', seen, 'NX', seen_until, seen_id) == 0 then status = 0 end
    known[seen] = 'zset'
  end
  if status == 1 then
    local once = guarded(ack_stream ~= '' or seen ~= '', checked, n_checks, n_ops)
    for o = 1, n_ops do apply(o, bumped, once) end
    for key in pairs(bumped) do
      redis.call('HINCRBY', key, '_v', 1)
      bumped[key] = nil
    end
    for key, t in pairs(planned) do
      known[key] = t
      planned[key] = nil
    end
  elseif status ~= 0 then
    stopped = true
  end
  out[c] = status
end
if explaining > 0 then return {} end
return out
