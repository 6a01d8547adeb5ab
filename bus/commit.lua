-- Apply a batch of commits in order; each is all-or-nothing. See bus/contract.py.
-- ARGV: group, n, then per commit:
--   ack_stream, ack_id, seen_key, seen_ttl, n_checks, (key, expected_v)*, n_ops, (op, n_args, args*)*
-- Returns one status per commit: 1 applied, 0 duplicate (acked only), -1 conflict (untouched).
-- The first conflict stops the batch: later commits may have read what this one would write.
local unpack = unpack or table.unpack
local group = ARGV[1]
local n = tonumber(ARGV[2])
local i = 3
local out = {}
local stopped = false

local function apply(op, args)
  if op == 'HSET' or op == 'HINCRBY' then
    redis.call(op, unpack(args))
    redis.call('HINCRBY', args[1], '_v', 1)
  elseif op == 'PUBLISH' then
    local stream, trace = args[1], args[2]
    local id = redis.call('XADD', stream, '*', unpack(args, 3))
    if trace ~= '' then redis.call('RPUSH', trace, stream .. ' ' .. id) end
  elseif op == 'COUNT' then
    redis.call('HINCRBY', unpack(args))
  elseif op == 'RPUSH' or op == 'ZADD' or op == 'SET' then
    redis.call(op, unpack(args))
  else
    error('commit.lua: unknown op ' .. tostring(op))
  end
end

for c = 1, n do
  local ack_stream, ack_id, seen, seen_ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local n_checks = tonumber(ARGV[i + 4])
  i = i + 5
  local status = 1
  if stopped then status = -1 end
  for _ = 1, n_checks do
    if status == 1 and (redis.call('HGET', ARGV[i], '_v') or '0') ~= ARGV[i + 1] then status = -1 end
    i = i + 2
  end
  if status == 1 and seen ~= '' and redis.call('EXISTS', seen) == 1 then status = 0 end
  local n_ops = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n_ops do
    local op, n_args = ARGV[i], tonumber(ARGV[i + 1])
    if status == 1 then apply(op, { unpack(ARGV, i + 2, i + 1 + n_args) }) end
    i = i + 2 + n_args
  end
  if status >= 0 then
    if status == 1 and seen ~= '' then redis.call('SET', seen, '1', 'EX', seen_ttl) end
    if ack_stream ~= '' then redis.call('XACK', ack_stream, group, ack_id) end
  else
    stopped = true
  end
  out[c] = status
end
return out
