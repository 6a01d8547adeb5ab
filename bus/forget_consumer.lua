-- Delete a consumer from a group only if it holds nothing pending, atomically: XGROUP
-- DELCONSUMER drops a consumer's pending entries from the group, which would lose them.
-- ARGV: stream, group, consumer. Returns 1 if deleted, 0 if it still holds entries.
local p = redis.call('XPENDING', ARGV[1], ARGV[2], '-', '+', 1, ARGV[3])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', ARGV[1], ARGV[2], ARGV[3])
return 1
