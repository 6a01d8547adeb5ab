-- A counter raised to at least ARGV[1] (an id given by hand, e.g. `place-order --order-id 700`),
-- so that INCRBY (RedisStreamsBus.allocate_ids) never hands that id out later. INCRBY only: the
-- user that draws ids from the counter may run no other command on it.
-- KEYS: the counter. ARGV: the value, a whole number below 2^53. Returns the counter after.
local now = redis.call('INCRBY', KEYS[1], 0)
local want = tonumber(ARGV[1])
if want > now then return redis.call('INCRBY', KEYS[1], want - now) end
return now
