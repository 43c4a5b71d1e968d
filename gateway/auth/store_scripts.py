"""The Lua scripts of the auth store (store.py): each touches one hash slot (Redis Cluster)."""

from __future__ import annotations

# A revoked key is final: it may be written again only as revoked and with the same secret, so
# a rotation (or any edit) read before a revocation can never undo it. A write made from a
# record read earlier (ARGV[5], its stored JSON) goes through only if the key still holds it:
# of two rotations racing, one wins and the other is told, so no caller is handed a secret
# that a concurrent write has already replaced.

WRITE_KEY = """
local current = redis.call('GET', KEYS[1])
if ARGV[4] == 'create' then
  if current then return 'exists' end
elseif not current then
  return 'missing'
else
  if ARGV[5] ~= '' and current ~= ARGV[5] then
    local old = cjson.decode(current)
    if old['revoked'] then return 'revoked' end
    return 'changed'
  end
  local old = cjson.decode(current)
  if old['revoked'] then
    local new = cjson.decode(ARGV[1])
    if not new['revoked'] or new['secret_hash'] ~= old['secret_hash'] then
      return 'revoked'
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'ok'
"""

# A tenant's change made from the record read earlier (ARGV[4], its stored JSON): written only
# if the tenant still holds it, so of two changes sent at once neither undoes the other.
CHANGE_TENANT = """
local current = redis.call('GET', KEYS[1])
if not current then return 'missing' end
if current ~= ARGV[4] then return 'changed' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 'ok'
"""


# A key's place in its tenant's indexes (KEYS[2], KEYS[3]), made before its record is written; the
# tenant (KEYS[1]) is created with ARGV[1] if it has no record: in the same script, so a deletion
# of the tenant cannot fall between the two and leave the key listed under no tenant. 1: created.
INDEX_KEY = """
local created = redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
if created then return 1 end
return 0
"""

# A tenant's record and its key indexes, gone at once; its record (stored JSON) and the key ids
# the indexes held are the answer (nil: no such tenant), so that every key listed up to this
# moment is revoked by the caller, and any listed after belongs to a new tenant of the same id.
DELETE_TENANT = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
local ids = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {current, ids}
"""
