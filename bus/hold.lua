-- One idempotent step on one product's stock, for one order: its hold. See docs/partitions.md.
-- KEYS[1] the stock hash (start, available, reserved, sold, _v), KEYS[2] the hold hash (status,
-- qty), whose hash tag is the stock key's name: both in one slot, so this step is atomic.
-- ARGV: op (reserve | release | sell | forget), qty (reserve), retention_s.
--   reserve  a hold that exists is returned unchanged (whatever it is); available < qty writes a
--            SHORT hold; else available -= qty, reserved += qty and the hold is RESERVED.
--   release  a RESERVED hold goes back to available and becomes RELEASED; else unchanged.
--   sell     a RESERVED hold moves from reserved to sold and becomes SOLD; else unchanged.
--   forget   (its entry was dead-lettered) a RESERVED hold goes back to available; a RESERVED,
--            SHORT or RELEASED hold is deleted, so a replay of the entry starts afresh.
-- Returns the hold's status after the step ('' for none), forget the status it had.
-- Every write of the stock hash bumps its _v by one (bus/commit.lua's convention). A final hold
-- (SHORT, RELEASED, SOLD) expires retention_s after it was written; a RESERVED one never does.
-- Redis does not roll a script back: every write is checked (types, integers, ACL) before the
-- first, and a step that would fail returns an error reply having written nothing.
local stock, hold = KEYS[1], KEYS[2]
local op, retention = ARGV[1], ARGV[3]
local LIMIT = 2 ^ 50

local function fail(why) return redis.error_reply('HOLD ' .. why) end

local function denied(...)
  if redis.acl_check_cmd and not redis.acl_check_cmd(...) then
    local words = { ... }
    return 'NOPERM this user may not run ' .. words[1] .. ' on ' .. tostring(words[2])
  end
end

local function type_of(key)
  local t = redis.call('TYPE', key)
  return type(t) == 'table' and t.ok or t
end

if op ~= 'reserve' and op ~= 'release' and op ~= 'sell' and op ~= 'forget' then
  return fail('unknown op ' .. tostring(op))
end
if not string.match(retention or '', '^[1-9]%d?%d?%d?%d?%d?%d?%d?%d?%d?$') then
  return fail('retention ' .. tostring(retention) .. ' is not whole seconds in 1..10^10')
end
local no = denied('TYPE', stock) or denied('TYPE', hold) or denied('HGETALL', hold)
  or denied('HGET', stock, 'available')
if no then return redis.error_reply(no) end
for _, key in ipairs({ stock, hold }) do
  local t = type_of(key)
  if t ~= 'none' and t ~= 'hash' then return fail(key .. ' holds a ' .. t .. ', not a hash') end
end

local status = redis.call('HGET', hold, 'status') or ''
local held = redis.call('HGET', hold, 'qty') or '0'
if not string.match(held, '^%d+$') or tonumber(held) > LIMIT then
  return fail(hold .. ' field qty is not a whole number')
end
held = tonumber(held)

-- The stock fields a step moves, read and checked before anything is written.
local function counts(fields)
  local out = {}
  for _, f in ipairs(fields) do
    local v = redis.call('HGET', stock, f) or '0'
    if not string.match(v, '^-?%d+$') or math.abs(tonumber(v)) > LIMIT then
      return nil, stock .. ' field ' .. f .. ' is not an integer in the safe range'
    end
    out[f] = tonumber(v)
  end
  return out
end

local function may_write(with_stock)
  return (with_stock and (denied('HINCRBY', stock, 'available', '1') or denied('HINCRBY', stock, '_v', '1')))
    or denied('HSET', hold, 'status', 'x') or denied('EXPIRE', hold, retention) or denied('DEL', hold)
end

-- Move qty from field `from` to field `to` of the stock hash (either may be nil), bumping _v.
local function move(from, to, qty)
  if from then redis.call('HINCRBY', stock, from, -qty) end
  if to then redis.call('HINCRBY', stock, to, qty) end
  redis.call('HINCRBY', stock, '_v', 1)
end

-- The stock's counts are read (and must be integers) only by a step that moves stock: a reserve,
-- or a step on a RESERVED hold. A forget, sell or release that moves nothing never fails on a
-- stock hash someone broke, so the entry it serves can still be dead-lettered.
local c, bad = { available = 0 }, nil
if op == 'reserve' or status == 'RESERVED' then
  c, bad = counts({ 'available', 'reserved', 'sold', '_v' })
  if not c then return fail(bad) end
end

if op == 'reserve' then
  if status ~= '' then return status end
  local qty = ARGV[2]
  if not string.match(qty or '', '^[1-9]%d*$') or tonumber(qty) > LIMIT then
    return fail('quantity ' .. tostring(qty) .. ' is not a whole number above 0')
  end
  qty = tonumber(qty)
  no = may_write(true)
  if no then return redis.error_reply(no) end
  if c.available < qty then
    redis.call('HSET', hold, 'status', 'SHORT', 'qty', qty)
    redis.call('EXPIRE', hold, retention)
    return 'SHORT'
  end
  move('available', 'reserved', qty)
  redis.call('HSET', hold, 'status', 'RESERVED', 'qty', qty)
  return 'RESERVED'
end

no = may_write(status == 'RESERVED')
if no then return redis.error_reply(no) end
if op == 'forget' then
  if status == 'RESERVED' then move('reserved', 'available', held) end
  if status == 'RESERVED' or status == 'SHORT' or status == 'RELEASED' then redis.call('DEL', hold) end
  return status
end
if status ~= 'RESERVED' then return status end
local next_status = op == 'sell' and 'SOLD' or 'RELEASED'
move('reserved', op == 'sell' and 'sold' or 'available', held)
redis.call('HSET', hold, 'status', next_status)
redis.call('EXPIRE', hold, retention)
return next_status
