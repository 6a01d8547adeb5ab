-- Remove from a sorted-set index the members whose own key is gone (expired), and count them.
-- KEYS: index, counter, then each candidate's key; ARGV: the candidates (members), same order.
-- Checked and removed in one step, so a member is never removed while its key exists, and two
-- pruners racing count each removal once (ZREM says whether it removed).
local removed = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
if removed > 0 then redis.call('INCRBY', KEYS[2], removed) end
return removed
