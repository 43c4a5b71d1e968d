"""The `auth.jwt` section of the gateway's config: which bearer JWTs are accepted, and the keys
they are checked with (gateway/auth/jwt.py verifies them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from gateway.settings_section import Section


class JwtClaims(Section):
    """Which claim carries what. Limits and models are optional claims."""

    tenant: str = "tenant"
    subject: str = "sub"
    models: str = "models"
    rpm: str = "rpm"
    tpm: str = "tpm"
    max_concurrency: str = "max_concurrency"


# What auth.jwt.algorithms may list: pyjwt's, but "none" (an unsigned token is never accepted).
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512", "ES521", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip


class JwtSettings(Section):
    """Bearer JWTs, verified with pyjwt. Off unless at least one key source is configured."""

    # Both required once a key source is set: every token must carry and match them.
    issuer: str | None = None
    audience: str | None = None
    # Explicit allow-list (JWT_ALGORITHMS; "none" is refused).
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    public_key_file: Path | None = None  # one PEM public key (RSA or EC)
    jwks_file: Path | None = None
    jwks_url: str | None = None  # https:// only; redirects are not followed
    # CA bundle that verifies the jwks_url server instead of the system's (a private IdP).
    jwks_ca_file: Path | None = None
    hmac_secret: str | None = None  # only for HS* algorithms; never an asymmetric key
    leeway_s: float = Field(default=30.0, ge=0)
    jwks_cache_s: float = Field(default=300.0, gt=0)
    claims: JwtClaims = Field(default_factory=JwtClaims)

    @property
    def enabled(self) -> bool:
        sources = (self.public_key_file, self.jwks_file, self.jwks_url, self.hmac_secret)
        return any(s is not None for s in sources)

    @field_validator("jwks_url")
    @classmethod
    def _https_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("https://"):
            raise ValueError("auth.jwt.jwks_url must be an https:// URL")
        return url

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, algorithms: list[str]) -> list[str]:
        unknown = [a for a in algorithms if a not in JWT_ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown {unknown}: each is one of {', '.join(JWT_ALGORITHMS)}")
        return algorithms

    @model_validator(mode="after")
    def _issuer_and_audience_when_on(self) -> JwtSettings:
        if self.enabled:
            missing = [f"auth.jwt.{n}" for n in ("issuer", "audience") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    "required when JWTs are on (a key source is set): " + ", ".join(missing)
                )
        return self

    @model_validator(mode="after")
    def _a_key_for_an_algorithm(self) -> JwtSettings:
        """JWTs that could never verify are a config error, not a 401 for every token."""
        if not self.enabled:
            return self
        hmac = [a for a in self.algorithms if a.startswith("HS")]
        keyed = self.public_key_file or self.jwks_file or self.jwks_url
        if not (hmac and self.hmac_secret) and not (len(hmac) < len(self.algorithms) and keyed):
            raise ValueError(
                f"no key for any of the algorithms {self.algorithms}: HS* need "
                "hmac_secret; the others public_key_file, jwks_file or jwks_url"
            )
        if hmac and self.hmac_secret:
            needed = max(int(a[2:]) // 8 for a in hmac)  # RFC 7518 3.2: the hash's size
            if len(self.hmac_secret.encode()) < needed:
                raise ValueError(
                    f"auth.jwt.hmac_secret must be at least {needed} bytes for {', '.join(hmac)}"
                )
        return self
