-- Remove from a sorted-set index the members whose own key is gone (expired), and count them.
-- KEYS: index, counter, then each member's key; ARGV: the members, in the same order (ARGV[j] is
-- the member whose key is KEYS[j + 2]). Every key in KEYS, as Redis Cluster and ACL key patterns
-- need: the caller passes the candidates it read from the index, a chunk at a time. (ACLs still
-- check each command on its own key: the trimmer may ZREM the index, INCRBY the counter and only
-- ask whether an order key exists; its EVALSHA selector covers the three patterns together.)
-- Checked and removed in one step, so a member is never removed while its key exists, and two
-- pruners racing count each removal once (ZREM says whether it removed).
local index, counter = KEYS[1], KEYS[2]
local removed = 0
for j = 1, #ARGV do
  if redis.call('EXISTS', KEYS[j + 2]) == 0 then
    removed = removed + redis.call('ZREM', index, ARGV[j])
  end
end
if removed > 0 then redis.call('INCRBY', counter, removed) end
return removed
