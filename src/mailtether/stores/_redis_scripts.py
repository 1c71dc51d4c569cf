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
# one, and JSON text never does), cut with plain find (memchr), not a pattern (one step a
# character). One argument, not one per field: redis-py packs each argument in Python, the
# server splits the text in C. Answers are one text too (one bulk reply to parse, not an
# array of them): lines, as JSON text never holds a raw newline.

# KEYS: none (every key shares the prefix's hash slot); ARGV: the prefix ("{name}"), the writes,
# how many. The writes come in runs sharing namespace, state and expect: the run's namespace,
# state, expect or '', how many writes, then each write's key and data, every field ended by
# NUL (a field cut is a C call each: a batch's writes mostly share all three).
# Each write is applied as the one-write put would, in order; the answer is the time stamp,
# then for each write its new version or 0 (its compare-and-set refused), spaces between.
#
# What costs the server is the commands a record takes (each redis.call builds its arguments,
# runs the command and parses its reply back), so a record takes at most two: HMGET and HSET.
# The writes are cut first, grouped by namespace (writes to one record stay in order; the
# namespaces are applied one after the other, which ends as the writes in order would: no
# namespace holds '|', so two never share a record): one
# EXISTS of a namespace's records says whether any of them exists, and if none does (a first
# sync's claims, new content records) no record needs its HMGET (version 0, no state).
# The indexes are written once for the whole script, a few commands per namespace: one
# ZADD to the namespace index, one ZREM per state left, one ZADD per state entered, one SADD.
# The end result is what writing them record by record gave: all writes share one stamp, and
# only a record's state before the script and after its last write matter (one that passed
# through a state within the script is in that state's index neither before nor after).
# A record the script writes again is read from the script's own table, not with HMGET.
# Versions stay text as HMGET gives them (an equal text is an equal version; the next one is
# worked out once per version, not converted back and forth a record).
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
local base, text, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local find, sub, call = string.find, string.sub, redis.call
-- unpack is bounded by Lua's C stack (8,000 values): long lists go in several commands
local function send(command, key, values, n)
  for from = 1, n, 2000 do
    call(command, key, unpack(values, from, math.min(from + 1999, n)))
  end
end
-- The writes, cut first: grouped by namespace, each group's record keys in one list
local keys, states, expects, datas = {}, {}, {}, {}
local spaces, order = {}, {}  -- namespace: {prefix, name, rows, records, n}
local at, i, left, namespace, state, expect, space = 1, 0, 0, nil, nil, nil, nil
while i < count do
  local stop
  if left == 0 then  -- a run's head: its namespace, state, expect, how many writes
    stop = find(text, '\\0', at, true)
    local name = sub(text, at, stop - 1)
    at = stop + 1
    stop = find(text, '\\0', at, true)
    state = sub(text, at, stop - 1)
    at = stop + 1
    stop = find(text, '\\0', at, true)
    expect = sub(text, at, stop - 1)
    at = stop + 1
    stop = find(text, '\\0', at, true)
    left = tonumber(sub(text, at, stop - 1))
    at = stop + 1
    if name ~= namespace then  -- a batch is mostly one namespace: its prefix is built once
      namespace = name
      space = spaces[name]
      if not space then
        space = {base .. ':r:' .. name .. '|', name, {}, {}, 0}
        spaces[name] = space
        order[#order + 1] = space
      end
    end
  end
  i = i + 1
  left = left - 1
  stop = find(text, '\\0', at, true)
  local key = sub(text, at, stop - 1)
  at = stop + 1
  stop = find(text, '\\0', at, true)
  datas[i] = sub(text, at, stop - 1)
  at = stop + 1
  keys[i] = key
  states[i] = state
  expects[i] = expect
  local n = space[5] + 1
  space[5] = n
  space[3][n] = i
  space[4][n] = space[1] .. key
end
local out = {stamp}
local after = {}  -- version text: the next one's ('0' -> '1')
local seen = {}   -- record key: {version text, state, state before the script, written?, key}
for _, space in ipairs(order) do
  local rows, records, n = space[3], space[4], space[5]
  -- A namespace none of whose records exists (a first sync's claims, new content records)
  -- needs no HMGET a record: one EXISTS of them all says so. Not asked when the first write
  -- updates a version (a batch's outcomes): its records exist, as good as always.
  local found, first = 0, expects[rows[1]]
  if first ~= '' and first ~= '0' then
    found = 1
  else
    for from = 1, n, 2000 do
      found = found + call('EXISTS', unpack(records, from, math.min(from + 1999, n)))
    end
  end
  local written, w = {}, 0
  for j = 1, n do
    local i, record = rows[j], records[j]
    local entry = seen[record]
    if not entry then
      if found == 0 then
        entry = {'0', nil, nil, false, keys[i]}
      else
        local current = call('HMGET', record, 'version', 'state')
        entry = {current[1] or '0', current[2], current[2], false, keys[i]}
      end
      seen[record] = entry
    end
    local version, expect = entry[1], expects[i]
    -- the versions as text: equal text is an equal number (the answer, HSET's argument)
    if expect ~= '' and expect ~= version and tonumber(expect) ~= (tonumber(version) or 0) then
      out[i + 1] = '0'
    else
      local new = after[version]
      if not new then
        new = tostring((tonumber(version) or 0) + 1)
        after[version] = new
      end
      local state = states[i]
      call('HSET', record, 'state', state, 'data', datas[i], 'version', new, 'updated_at', stamp)
      entry[1] = new
      entry[2] = state
      if not entry[4] then
        entry[4] = true
        w = w + 1
        written[w] = entry
      end
      out[i + 1] = new
    end
  end
  if w > 0 then
    -- the namespace index; the states entered, left and new (each with its list, its length)
    local index, entered, left, new = {}, {}, {}, {}
    local one = written[1][2]  -- the state of every written record, or false
    for x = 1, w do
      local entry = written[x]
      local state, before, key = entry[2], entry[3], entry[5]
      index[2 * x - 1] = stamp
      index[2 * x] = key
      if state ~= one then one = false end
      if before ~= state then
        new[state] = true
        if before then
          local from = left[before]
          if not from then
            from = {0}
            left[before] = from
          end
          local k = from[1] + 1
          from[1] = k
          from[k + 1] = key
        end
      end
    end
    local by_state = base .. ':s:' .. space[2] .. '|'
    for state, keys in pairs(left) do
      for from = 2, keys[1] + 1, 2000 do
        call('ZREM', by_state .. state, unpack(keys, from, math.min(from + 1999, keys[1] + 1)))
      end
    end
    send('ZADD', base .. ':i:' .. space[2], index, 2 * w)
    if one then  -- one state for all (as good as always): its index takes the same list
      send('ZADD', by_state .. one, index, 2 * w)
    else
      for x = 1, w do
        local entry = written[x]
        local into = entered[entry[2]]
        if not into then
          into = {}
          entered[entry[2]] = into
        end
        into[#into + 1] = stamp
        into[#into + 1] = entry[5]
      end
      for state, members in pairs(entered) do send('ZADD', by_state .. state, members, #members) end
    end
    local states = {}
    for state in pairs(new) do states[#states + 1] = state end
    if #states > 0 then send('SADD', base .. ':states:' .. space[2], states, #states) end
  end
end
return table.concat(out, ' ', 1, count + 1)
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
