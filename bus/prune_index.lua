-- Remove from a sorted-set index the members whose own key is gone (expired), and count them.
-- ARGV: index, counter, then (member, its key) pairs. Keys travel in ARGV, as in commit.lua: ACLs
-- check each command the script runs on its own key (the trimmer may ZREM the index, INCRBY the
-- counter and only read order keys), where KEYS would have to pass one selector all together.
-- Checked and removed in one step, so a member is never removed while its key exists, and two
-- pruners racing count each removal once (ZREM says whether it removed).
local index, counter = ARGV[1], ARGV[2]
local removed = 0
for i = 3, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', index, ARGV[i])
  end
end
if removed > 0 then redis.call('INCRBY', counter, removed) end
return removed
