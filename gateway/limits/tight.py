"""Limits tight enough that what one replica gives back decides another's next admission.

Settlements linger a few ms for company before they reach Redis (metering/settler.py). Under a
roomy limit that costs nothing; under a tight one the key's next request, sent to another
replica as soon as the answer came, found the slot still held or the reservation not yet given
back, and was refused: for a concurrency slot "try again in 1 s", for tokens the reservation's
drain time (~20 s: a request without max_tokens reserves default_max_tokens and uses a few).
So a tight limit's settlement goes at once (Accounting), and a tight limit's refusal for tokens
or concurrency is asked once more a moment later (AdmissionControl) before it is answered.
"""

from __future__ import annotations

from gateway.auth.principal import Principal

# A slot under a concurrency limit this small is freed in Redis at once: few requests share
# it, so the next one may be waiting for this very slot. Under a larger limit the release may
# linger for company, like any settlement: a busy key's replica writes to Redis often anyway,
# and a quiet one is far from its limit.
TIGHT_CONCURRENCY = 20
# A reservation of 1/TIGHT_TOKEN_SHARE of a tpm limit or more is given back at once too.
TIGHT_TOKEN_SHARE = 20


def tight(caller: Principal, reserved_tokens: int) -> bool:
    """Whether a concurrency limit of the caller's is under TIGHT_CONCURRENCY, or a request
    reserving `reserved_tokens` takes 1/TIGHT_TOKEN_SHARE of a tpm limit or more."""
    key, tenant = caller.key_limits, caller.tenant_limits
    slots = (key.max_concurrency, tenant.max_concurrency)
    if any(limit and limit < TIGHT_CONCURRENCY for limit in slots):
        return True
    share = reserved_tokens * TIGHT_TOKEN_SHARE
    return any(tpm and share >= tpm for tpm in (key.tpm, tenant.tpm))
