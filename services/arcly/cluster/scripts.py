"""The registry's Lua scripts: every step that must be atomic in Redis, in one place.

Each reads and writes only keys of one registry (a single Redis or Sentinel; not Redis Cluster:
the claim reads the current owner's session key, which is not among its KEYS).
"""

# Claim. KEYS: owner, fence, our session key, stream record. ARGV: node, session, wall clock
# ms, key prefix, relay address, start time. Refused while our own session is not the live one
# (we could not keep what we claim) or another live session owns the key (an owner of chart
# 0.1, without session, while its key lives). Our own session's claim is granted again: the
# node's engine allows one publish per key, so such a claim is a leftover a failed release left.
# Tokens never fall below the wall clock in ms, so they stay unique even if Redis lost its data
# (they name publish sessions, e.g. in HLS segment URIs). The stream record is written in the
# same step, so an owner and its record always agree. Reads the owner's session key, which is
# not in KEYS: fine on a single Redis, not on Redis Cluster.
CLAIM = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return redis.error_reply('NOSESSION') end
local current = redis.call('GET', KEYS[1])
if current then
  local node, _, session = string.match(current, '^(.*)|(%d+)|(%w+)$')
  if not node then return false end
  if not (node == ARGV[1] and session == ARGV[2])
     and redis.call('GET', ARGV[4] .. 'session:' .. node) == session then return false end
end
local token = redis.call('INCR', KEYS[2])
if token < tonumber(ARGV[3]) then
  token = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token .. '|' .. ARGV[2])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'owner', ARGV[1], 'relay', ARGV[5], 'token', token,
           'started_at', ARGV[6])
return token
"""
# Release only what we hold (compare-and-delete). KEYS: owner, stream record. ARGV: our value.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""
# Set a field of a stream record while we own the key (never recreates a released record).
# KEYS: owner, stream record. ARGV: our value, field, value.
SET_FIELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
# Restore what we hold after Redis lost its data (restarted without persistence) while our
# session was still live by our clock: nobody could have claimed it, unless in the moment
# since. KEYS: session, then (owner, fence) per key. ARGV: session, ttl, then (value, token).
# Returns the indexes (1-based, per key) that someone else holds now.
RESTORE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1} end
local lost = {}
for i = 2, #KEYS, 2 do
  local value, token = ARGV[i + 1], tonumber(ARGV[i + 2])
  local current = redis.call('GET', KEYS[i])
  if not current then
    redis.call('SET', KEYS[i], value)
    if tonumber(redis.call('GET', KEYS[i + 1]) or 0) < token then
      redis.call('SET', KEYS[i + 1], token)
    end
  elseif current ~= value then
    table.insert(lost, i / 2)
  end
end
return lost
"""

# Release a key if its owner is still the one a decision was made on (compare-and-delete; an
# empty expected value: whoever holds it). KEYS: owner, stream, fence, idle. ARGV: expected
# owner value, the key's text. Returns the released owner value, or false.
RELEASE_IF = """
local current = redis.call('GET', KEYS[1])
if not current or (ARGV[1] ~= '' and current ~= ARGV[1]) then return false end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('INCR', KEYS[3])
local token = string.match(current, '^.*|(%d+)|%w+$') or string.match(current, '^.*|(%d+)$')
if token then redis.call('ZREM', KEYS[4], ARGV[2] .. '|' .. token) end
return current
"""
