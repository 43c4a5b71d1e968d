"""Who a request acts for: a tenant, a key id (or JWT subject), model allow-lists and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.finetune.names import base_of, owner_of

# Limits are numbers in Lua (doubles) and in JSON replies (orjson: 64-bit): larger ones were
# stored and then failed every reply that shows them. (Here, not in auth/records.py: the admin
# CLI checks its options with it, without pydantic.)
MAX_LIMIT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits at one scope; None means "no limit at this scope"."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str  # an API key's public id, or a JWT's subject
    source: Literal["api_key", "jwt", "anonymous"]
    key_models: frozenset[str] | None = None  # None: every model
    tenant_models: frozenset[str] | None = None
    key_limits: Limits = field(default_factory=Limits)
    tenant_limits: Limits = field(default_factory=Limits)
    priority: int | None = None  # the tenant's vLLM request priority; None: the engines' default
    media_hosts: frozenset[str] | None = None  # the tenant's media URL hosts; None: the default

    @property
    def scope_id(self) -> str:
        """The id of this caller's own rate-limit scope within its tenant. A JWT's subject is
        any string its issuer chose, so it gets a namespace of its own: a subject spelled like
        one of the tenant's API key ids (12 hex digits) must not share that key's counters."""
        return f"jwt:{self.key_id}" if self.source == "jwt" else self.key_id

    def may_use(self, model: str) -> bool:
        """Both allow-lists apply: the key's and its tenant's. A fine-tuned model (`ft:...`) is
        its own tenant's only, whatever the lists say; a list allows it by its own name or by
        its base model's (a key allowed a base model uses what its tenant fine-tuned on it:
        the adapter runs on that model's engines, and its name exists only once the job ends,
        too late to be put on a list before)."""
        base = None
        if model.startswith("ft:"):
            if owner_of(model) != self.tenant:
                return False
            base = base_of(model)
        return _allows(self.key_models, model, base) and _allows(self.tenant_models, model, base)


def _allows(models: frozenset[str] | None, model: str, base: str | None) -> bool:
    return models is None or model in models or (base is not None and base in models)


ANONYMOUS = Principal(tenant="anonymous", key_id="anonymous", source="anonymous")
