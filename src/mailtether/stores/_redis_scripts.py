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

# Batches travel as one argument: fields each ended by NUL (no key, state or namespace holds
# one, and JSON text never does), read with gmatch's %z. One argument, not one per field:
# redis-py packs each argument in Python, the server splits the text in C. Answers are one
# text too (one bulk reply to parse, not an array of them): lines, as JSON text never holds
# a raw newline.

# KEYS: none (every key shares the prefix's hash slot); ARGV: the prefix ("{name}"), the writes
# (namespace, key, state, expect or '', data; each ended by NUL), how many.
# Each write is applied as the one-write put would, in order; the answer is the time stamp,
# then for each write its new version or 0 (its compare-and-set refused), spaces between.
_PUT_MANY: Final = (
    _NOW
    + """
local base = ARGV[1]
local field = string.gmatch(ARGV[2], '(.-)%z')
local out = {stamp}
for i = 1, tonumber(ARGV[3]) do
  local namespace = field()
  local key = field()
  local state = field()
  local expect = field()
  local data = field()
  local record = base .. ':r:' .. namespace .. '|' .. key
  local current = redis.call('HMGET', record, 'version', 'state')
  local version = tonumber(current[1]) or 0
  if expect ~= '' and tonumber(expect) ~= version then
    out[i + 1] = 0
  else
    local by_state = base .. ':s:' .. namespace .. '|'
    local states = base .. ':states:' .. namespace
    if current[2] and current[2] ~= state then
      local old = by_state .. current[2]
      redis.call('ZREM', old, key)
      if redis.call('ZCARD', old) == 0 then redis.call('SREM', states, current[2]) end
    end
    redis.call('HSET', record, 'state', state, 'data', data, 'version', version + 1,
               'updated_at', stamp)
    redis.call('ZADD', base .. ':i:' .. namespace, stamp, key)
    redis.call('ZADD', by_state .. state, stamp, key)
    redis.call('SADD', states, state)
    out[i + 1] = version + 1
  end
end
return table.concat(out, ' ')
"""
)

# KEYS: none (see put_many); ARGV: record-key prefix, the keys (each ended by NUL).
# One line per key, in order: "state version updated_at data", or empty if it has no record.
_GET_MANY: Final = """
local lines = {}
local i = 0
for key in string.gmatch(ARGV[2], '(.-)%z') do
  i = i + 1
  local f = redis.call('HMGET', ARGV[1] .. key, 'state', 'version', 'updated_at', 'data')
  if f[1] then lines[i] = f[1] .. ' ' .. f[2] .. ' ' .. f[3] .. ' ' .. f[4] else lines[i] = '' end
end
return table.concat(lines, '\\n')
"""

# KEYS: none (see put_many); ARGV: record-key prefix, the keys (each ended by NUL).
# One character per key, in order: 1 if it has a record, else 0.
_EXISTING: Final = """
local marks = {}
local i = 0
for key in string.gmatch(ARGV[2], '(.-)%z') do
  i = i + 1
  marks[i] = redis.call('EXISTS', ARGV[1] .. key)
end
return table.concat(marks)
"""

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
    "put_many": _PUT_MANY,
    "get_many": _GET_MANY,
    "existing": _EXISTING,
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
