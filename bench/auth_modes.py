"""Gateway configurations for the overhead benchmark: no auth, a cached API key, or a JWT."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.embedded.redis_server import running_redis

ADMIN_TOKEN = "bench-admin-token-0123"
PEPPER = "bench-pepper-0123456789"


@dataclass(frozen=True, slots=True)
class AuthMode:
    config: str  # YAML lines added to the gateway's config
    token: str | None  # a JWT known before the gateway starts
    limited: bool = False  # the key carries rpm, tpm and concurrency limits
    redis_url: str | None = None  # the Redis behind the gateway, in every mode but "none"

    async def headers(self, gateway: str) -> dict[str, str]:
        if self.token is not None:
            return {"authorization": f"Bearer {self.token}"}
        if "redis_url" not in self.config:
            return {}
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        body: dict[str, object] = {"tenant": "bench"}
        if self.limited:  # limits high enough never to refuse: the cost of checking them
            body.update(rpm=10**9, tpm=10**12, max_concurrency=10**6)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{gateway}/admin/v1/keys", json=body, headers=admin) as resp,
        ):
            key: str = (await resp.json())["key"]
        return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def auth_mode(name: str, tmp: Path) -> AsyncIterator[AuthMode]:
    common = f"admin_token: {ADMIN_TOKEN}\n"
    if name == "none":
        yield AuthMode(common + "auth: {required: false}\n", None)
        return
    async with running_redis(None) as redis_url:
        common += f"redis_url: {redis_url}\nkey_pepper: {PEPPER}\n"
        if name in ("key", "limits"):
            yield AuthMode(common, None, limited=name == "limits", redis_url=redis_url)
            return
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp / "jwt-public.pem"
        pem.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        claims = {
            "tenant": "bench",
            "sub": "bench-user",
            "exp": int(time.time()) + 3600,
            "iss": "https://idp.bench",
            "aud": "llmaas",
        }
        token = jwt.encode(claims, private, algorithm="RS256")
        jwt_config = (
            f"auth:\n  jwt:\n    public_key_file: {pem}\n    algorithms: [RS256]\n"
            "    issuer: https://idp.bench\n    audience: llmaas\n"
        )
        yield AuthMode(common + jwt_config, token, redis_url=redis_url)
