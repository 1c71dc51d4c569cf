"""The Lua scripts of ``RedisStore``: each operation that reads and writes runs as one.

Redis runs a script atomically, so each is a compare-and-set or a consistent read on the
server. Keys and arguments are listed above each script; :data:`SCRIPTS` names them as the
store calls them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCRIPTS"]

# A script that needs the time reads the server's clock: expiry never depends on a client clock.
# The time travels as exact decimal text: Lua's tostring keeps only 14 digits (0.1 ms here),
# so a record's updated_at would not equal its index score, and scan(updated_before=...)
# would disagree with the record it returns. Text with 6 decimals parses to one and the same
# double in Lua, in Redis (for scores) and in Python.
_NOW: Final = """
local t = redis.call('TIME')
local stamp = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now = tonumber(stamp)
"""

# KEYS: record, namespace index, states set; ARGV: state-index prefix, state, data, expect, member
_PUT: Final = (
    _NOW
    + """
local current = redis.call('HMGET', KEYS[1], 'version', 'state')
local version = tonumber(current[1]) or 0
local expect = ARGV[4]
if expect ~= '' and tonumber(expect) ~= version then return nil end
local member = ARGV[5]
if current[2] and current[2] ~= ARGV[2] then
  local old = ARGV[1] .. current[2]
  redis.call('ZREM', old, member)
  if redis.call('ZCARD', old) == 0 then redis.call('SREM', KEYS[3], current[2]) end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'data', ARGV[3], 'version', version + 1,
           'updated_at', stamp)
redis.call('ZADD', KEYS[2], stamp, member)
redis.call('ZADD', ARGV[1] .. ARGV[2], stamp, member)
redis.call('SADD', KEYS[3], ARGV[2])
return {version + 1, stamp}
"""
)

# KEYS: record, namespace index, states set; ARGV: state-index prefix, expect, member
_DELETE: Final = """
local current = redis.call('HMGET', KEYS[1], 'version', 'state')
if not current[1] then return 0 end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= tonumber(current[1]) then return 0 end
local index = ARGV[1] .. current[2]
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', index, ARGV[3])
if redis.call('ZCARD', index) == 0 then redis.call('SREM', KEYS[3], current[2]) end
return 1
"""

# KEYS: namespace index, state index, states set; ARGV: record-key prefix, cutoff, batch, state
_PRUNE: Final = """
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                            tonumber(ARGV[3]))
for _, member in ipairs(members) do
  redis.call('DEL', ARGV[1] .. member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[4]) end
return #members
"""

# KEYS: index (of the namespace, or of one state); ARGV: record-key prefix, max score, limit.
# One script, so a scan sees one moment: no record half-way between two states.
_SCAN: Final = """
local members
if ARGV[3] == '' then
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
else
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
end
local found = {}
for _, member in ipairs(members) do
  local fields = redis.call('HMGET', ARGV[1] .. member, 'state', 'data', 'version', 'updated_at')
  if fields[1] then
    found[#found + 1] = member
    for i = 1, 4 do found[#found + 1] = fields[i] end
  end
end
return found
"""

# KEYS: states set; ARGV: state-index prefix
_COUNT: Final = """
local found = {}
for _, state in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('ZCARD', ARGV[1] .. state)
  if n > 0 then
    found[#found + 1] = state
    found[#found + 1] = n
  end
end
return found
"""

# KEYS: lease, fence; ARGV: owner, ttl
_ACQUIRE: Final = (
    _NOW
    + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'expires_at')
if held[1] and held[1] ~= '' and tonumber(held[2]) > now then return nil end
local token = redis.call('INCR', KEYS[2])
local expires = string.format('%.17g', now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'expires_at', expires,
           'ttl', ARGV[2])
return token .. ' ' .. expires
"""
)

# KEYS: lease; ARGV: owner, token, ttl
_RENEW: Final = (
    _NOW
    + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_at')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] or tonumber(held[3]) <= now then return nil end
local expires = string.format('%.17g', now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'expires_at', expires, 'ttl', ARGV[3])
return expires
"""
)

# KEYS: lease; ARGV: owner, token
_RELEASE: Final = (
    _NOW
    + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_at')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] or tonumber(held[3]) <= now then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'expires_at', '0')
return 1
"""
)

# KEYS: lease
_HOLDER: Final = (
    _NOW
    + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_at', 'ttl')
if not held[1] or held[1] == '' or tonumber(held[3]) <= now then return nil end
return held
"""
)

SCRIPTS: Final = {
    "put": _PUT,
    "delete": _DELETE,
    "prune": _PRUNE,
    "scan": _SCAN,
    "count": _COUNT,
    "acquire": _ACQUIRE,
    "renew": _RENEW,
    "release": _RELEASE,
    "holder": _HOLDER,
}
"""Every script, by the name of the store operation that runs it."""
