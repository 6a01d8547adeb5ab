-- Renew this consumer's lease on entries it is still working on: XCLAIM ... JUSTID to itself
-- resets their idle time so XAUTOCLAIM elsewhere does not take them mid-work. Only entries still
-- pending on this consumer are touched: one already taken over by another consumer stays there.
-- KEYS: stream. ARGV: group, consumer, id*
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
