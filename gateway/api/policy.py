"""Tenant policy applied to a request body before it is forwarded.

The body goes to the engine byte for byte unless policy must change it; only then is it
re-serialised once. vLLM's request `priority` is the tenant's (admin API), never the
client's: a client that could set it would jump every other tenant's queue. `cache_salt` is
a keyed hash of the tenant (and of the client's own salt, if any): prefix-cache hits, and
the timing they leak, stay within a tenant; so do the media ids clients give content parts
(media_ids.py), and a client's `session_id`, which vLLM publishes with its KV-cache events.
Engine-internal fields are refused (engine_fields.py), as are OpenAI fields the engine would
drop unread when that changes the answer (ignored_fields.py), and media URLs checked
(media.py).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.api.body import dump_json
from gateway.api.engine_fields import FieldBounds, check_engine_fields
from gateway.api.ignored_fields import check_ignored_fields
from gateway.api.media import HostResolver, MediaRules, check_media, system_resolve
from gateway.api.media_ids import media_id, scoped_id, tenant_media_ids
from gateway.api.prompt_logprobs import check_prompt_logprobs
from gateway.auth.principal import Principal
from gateway.errors import InvalidRequest
from gateway.settings import RequestPolicySettings

# vLLM 0.32 salts the prefix cache of all four (a decoder embedding model, last-token pooled,
# caches prefixes too).
SALTED_ROUTES = frozenset({"chat/completions", "completions", "responses", "embeddings"})
POLICY_FIELDS = ("priority", "cache_salt", "session_id")  # the only fields policy sets
# Only when no key_pepper is configured, which the settings allow in dev mode alone.
DEV_SALT_SECRET = b"llmaas-development-only-cache-salt"
# Salts a process remembers (an HMAC per request otherwise); clients' own salts are unbounded
# in number, so the memo is emptied when it reaches this many, and in size: a client's salt
# longer than this is hashed each time, not kept (4,096 salts of a 16 MiB body each would be
# 64 GiB held past their requests).
SALTS_KEPT = 4096
SALT_KEPT_CHARS = 256


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    settings: RequestPolicySettings
    salt_key: bytes  # derived from the key pepper (salt_key_from)
    resolve: HostResolver = system_resolve
    salts: dict[tuple[str, str | None], str] = field(default_factory=dict, compare=False)

    async def apply(
        self, route: str, raw: bytes, body: dict[str, Any], caller: Principal
    ) -> tuple[bytes, dict[str, Any]]:
        """The body as the engine may see it, or a 400 naming the field it may not."""
        s = self.settings
        check_engine_fields(body, FieldBounds(s.max_schema_bytes, s.max_logit_bias, s.max_stop))
        check_ignored_fields(route, body)
        if not s.prompt_logprobs:
            check_prompt_logprobs(route, body)
        hosts = s.media_hosts if caller.media_hosts is None else caller.media_hosts
        await check_media(body, MediaRules(frozenset(hosts), s.max_data_url_bytes, self.resolve))
        changed = dict(body)
        _set_priority(changed, caller.priority)
        if route in SALTED_ROUTES:
            changed["cache_salt"] = self.salt(caller.tenant, _client_salt(body))
        client_session = body.get("session_id")
        if isinstance(client_session, str) and client_session:  # (vLLM refuses a non-string)
            changed["session_id"] = session_id(self.salt_key, caller.tenant, client_session)
        renamed = self._media_ids(raw, changed, caller.tenant)
        if not renamed and _same(changed, body):
            return raw, body
        return dump_json(changed), changed

    def _media_ids(self, raw: bytes, body: dict[str, Any], tenant: str) -> bool:
        """Content parts' `uuid`s renamed within the tenant (media_ids.py); True if any was.
        Only a body whose bytes could spell the key (plainly or escaped) is walked."""
        if b"uuid" not in raw and b"\\u" not in raw:
            return False
        rename = partial(media_id, self.salt_key, tenant)
        found = False
        for top in ("messages", "input"):
            items = tenant_media_ids(body.get(top), rename)
            if items is not None:
                body[top] = items
                found = True
        return found

    def salt(self, tenant: str, client_salt: str | None) -> str:
        """cache_salt(...) under this policy's key, remembered."""
        if client_salt is not None and len(client_salt) > SALT_KEPT_CHARS:
            return cache_salt(self.salt_key, tenant, client_salt)
        kept = self.salts.get((tenant, client_salt))
        if kept is None:
            if len(self.salts) >= SALTS_KEPT:
                self.salts.clear()
            kept = self.salts[tenant, client_salt] = cache_salt(self.salt_key, tenant, client_salt)
        return kept


def salt_key_from(pepper: str | None) -> bytes:
    """A key for cache salts only, domain-separated from the key hashes under the same pepper."""
    secret = DEV_SALT_SECRET if pepper is None else pepper.encode()
    return hmac.new(secret, b"llmaas cache_salt key v1", hashlib.sha256).digest()


def cache_salt(key: bytes, tenant: str, client_salt: str | None) -> str:
    """The tenant's salt; with the client's own, a salt within the tenant's (64 hex chars)."""
    message = f"cache_salt:{len(tenant)}:{tenant}"
    if client_salt is not None:
        message += f":{client_salt}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def session_id(key: bytes, tenant: str, client_id: str) -> str:
    """The `session_id` the engine sees for a client's own (64 hex characters). vLLM tags the
    KV-cache events it publishes (to a KV-aware router, say) with it: within a tenant the same
    id is the same session, and one tenant's ids never name another's sessions."""
    return scoped_id(key, "session_id", tenant, client_id)


def _client_salt(body: dict[str, Any]) -> str | None:
    salt = body.get("cache_salt")
    if salt is None:
        return None
    if not isinstance(salt, str) or not salt:
        raise InvalidRequest(
            "'cache_salt' must be a non-empty string.", param="cache_salt", code="invalid_type"
        )
    return salt


def _set_priority(body: dict[str, Any], priority: int | None) -> None:
    """The tenant's `priority` (None: none at all, the engines' default)."""
    if priority is None:
        body.pop("priority", None)
    else:
        body["priority"] = priority


def _same(changed: dict[str, Any], body: dict[str, Any]) -> bool:
    """Policy left the fields it sets as they were, by type too (True == 1, not to vLLM)."""
    return all(
        (k in changed) == (k in body)
        and type(changed.get(k)) is type(body.get(k))
        and changed.get(k) == body.get(k)
        for k in POLICY_FIELDS
    )
