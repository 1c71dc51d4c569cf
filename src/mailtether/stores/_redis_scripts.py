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
#
# What costs the server is the number of commands a record takes (each redis.call builds its
# arguments, runs the command and parses its reply back), so a record takes two: HMGET and
# HSET. The indexes are written once for the whole script, a few commands per namespace: one
# ZADD to the namespace index, one ZREM per state left, one ZADD per state entered, one SADD.
# The end result is what writing them record by record gave: all writes share one stamp, and
# only a record's state before the script and after its last write matter (one that passed
# through a state within the script is in that state's index neither before nor after).
# A record the script writes again is read from the script's own table, not with HMGET.
# Fields are cut with plain find (memchr), not gmatch's pattern (one step per character).
#
# The states set holds every state that has a record, and may hold states that have none any
# more: a record leaving a state does not check whether it was the last one (ZCARD, SREM);
# count skips empty states, delete and prune still remove the state they empty. (Earlier
# versions kept exactly the non-empty states in it; old and new code read either set the
# same, so a deployment upgrades in place.) A record already in its new state needs no SADD:
# its state is in the set.
_PUT_MANY: Final = (
    _NOW
    + """
local base = ARGV[1]
local text = ARGV[2]
local find, sub = string.find, string.sub
local at = 1
local function field()
  local stop = find(text, '\\0', at, true)
  local value = sub(text, at, stop - 1)
  at = stop + 1
  return value
end
-- unpack is bounded by Lua's C stack (8,000 values): long lists go in several commands
local function send(command, key, values)
  for from = 1, #values, 2000 do
    redis.call(command, key, unpack(values, from, math.min(from + 1999, #values)))
  end
end
local function list_in(lists, name)  -- lists[name], made empty if missing
  local found = lists[name]
  if not found then
    found = {}
    lists[name] = found
  end
  return found
end
local out = {stamp}
local seen = {}    -- record key: {version, state, state before the script, written?, key}
local spaces = {}  -- namespace: {records = record-key prefix, name, written = {entries}}
local order = {}
local last, space
for i = 1, tonumber(ARGV[3]) do
  local namespace = field()
  local key = field()
  local state = field()
  local expect = field()
  local data = field()
  if namespace ~= last then  -- a batch is mostly one namespace: its prefix is built once
    last = namespace
    space = spaces[namespace]
    if not space then
      space = {records = base .. ':r:' .. namespace .. '|', name = namespace, written = {}}
      spaces[namespace] = space
      order[#order + 1] = space
    end
  end
  local record = space.records .. key
  local entry = seen[record]
  if not entry then
    local current = redis.call('HMGET', record, 'version', 'state')
    entry = {tonumber(current[1]) or 0, current[2], current[2], false, key}
    seen[record] = entry
  end
  local version = entry[1]
  if expect ~= '' and tonumber(expect) ~= version then
    out[i + 1] = 0
  else
    version = version + 1
    redis.call('HSET', record, 'state', state, 'data', data, 'version', version,
               'updated_at', stamp)
    entry[1] = version
    entry[2] = state
    if not entry[4] then
      entry[4] = true
      local written = space.written
      written[#written + 1] = entry
    end
    out[i + 1] = version
  end
end
for _, space in ipairs(order) do
  local written = space.written
  if #written > 0 then
    local index, entered, left, new = {}, {}, {}, {}
    for _, entry in ipairs(written) do
      local state, before, key = entry[2], entry[3], entry[5]
      index[#index + 1] = stamp
      index[#index + 1] = key
      local into = list_in(entered, state)
      into[#into + 1] = stamp
      into[#into + 1] = key
      if before ~= state then
        new[state] = true
        if before then
          local from = list_in(left, before)
          from[#from + 1] = key
        end
      end
    end
    local by_state = base .. ':s:' .. space.name .. '|'
    for state, keys in pairs(left) do send('ZREM', by_state .. state, keys) end
    send('ZADD', base .. ':i:' .. space.name, index)
    for state, members in pairs(entered) do send('ZADD', by_state .. state, members) end
    local states = {}
    for state in pairs(new) do states[#states + 1] = state end
    if #states > 0 then send('SADD', base .. ':states:' .. space.name, states) end
  end
end
return table.concat(out, ' ')
"""
)

# The look-ups below take the record keys whole (the client joins them with NUL + prefix, a
# join in C), cut with plain find. One EXISTS of them all comes first: a first sync looks up
# keys none of which has a record, and then no key needs a command of its own (the answer of
# each, when some exist).
_KEYS: Final = """
local text = ARGV[1]
local find, sub = string.find, string.sub
local keys, n, at = {}, 0, 1
while true do
  local stop = find(text, '\\0', at, true)
  if not stop then break end
  n = n + 1
  keys[n] = sub(text, at, stop - 1)
  at = stop + 1
end
local found = 0
for from = 1, n, 2000 do  -- unpack is bounded by Lua's C stack (8,000 values)
  found = found + redis.call('EXISTS', unpack(keys, from, math.min(from + 1999, n)))
end
"""

# KEYS: none (see put_many); ARGV: the record keys (each ended by NUL).
# One line per key, in order: "state version updated_at data", or empty if it has no record.
_GET_MANY: Final = (
    _KEYS
    + """
if found == 0 then return string.rep('\\n', n - 1) end
local lines = {}
for i = 1, n do
  local f = redis.call('HMGET', keys[i], 'state', 'version', 'updated_at', 'data')
  if f[1] then lines[i] = f[1] .. ' ' .. f[2] .. ' ' .. f[3] .. ' ' .. f[4] else lines[i] = '' end
end
return table.concat(lines, '\\n', 1, n)
"""
)

# KEYS: none (see put_many); ARGV: the record keys (each ended by NUL).
# One character per key, in order: 1 if it has a record, else 0. (EXISTS counts a key given
# twice twice: all n counted means every key has a record.)
_EXISTING: Final = (
    _KEYS
    + """
if found == 0 then return string.rep('0', n) end
if found == n then return string.rep('1', n) end
local marks = {}
for i = 1, n do marks[i] = redis.call('EXISTS', keys[i]) end
return table.concat(marks, '', 1, n)
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
