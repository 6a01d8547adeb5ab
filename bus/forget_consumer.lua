-- Delete a consumer from a group only if it holds nothing pending, atomically: XGROUP
-- DELCONSUMER drops a consumer's pending entries from the group, which would lose them.
-- KEYS: stream. ARGV: group, consumer. Returns 1 if deleted, 0 if it still holds entries.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
