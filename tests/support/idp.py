"""A JWKS endpoint over real HTTPS (a self-signed certificate made here) whose keys rotate and
which can misbehave: redirect, answer too much, or too slowly."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.netutil import free_port


def jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm if alg[:2] in ("RS", "PS") else jwt.algorithms.ECAlgorithm
    )
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA; returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmaas test idp")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "idp-cert.pem", directory / "idp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Idp:
    """The endpoint's state. `url(path)` names one of its routes:
    /jwks the keys; /redirect a 302 to /jwks; /huge 2 MiB without a Content-Length;
    /declared-huge a Content-Length of 2 MiB; /slow the keys after `slow_s`."""

    base: str
    ca_file: Path
    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    slow_s: float = 10.0

    def url(self, path: str = "/jwks") -> str:
        return self.base + path

    def document(self) -> bytes:
        return json.dumps({"keys": self.keys}).encode()

    async def jwks(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(body=self.document(), content_type="application/json")

    async def redirect(self, _: web.Request) -> web.Response:
        self.requests += 1
        raise web.HTTPFound(self.url("/jwks"))

    async def huge(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"keys": [], "pad": "')
        for _ in range(32):  # 2 MiB in all
            await resp.write(b"x" * 65536)
        await resp.write(b'"}')
        return resp

    async def declared_huge(self, _: web.Request) -> web.Response:
        self.requests += 1
        body = self.document() + b" " * (2 << 20)
        return web.Response(body=body, content_type="application/json")

    async def slow(self, _: web.Request) -> web.Response:
        self.requests += 1
        await asyncio.sleep(self.slow_s)
        return web.Response(body=self.document(), content_type="application/json")


@asynccontextmanager
async def running_idp(directory: Path) -> AsyncIterator[Idp]:
    cert, key = self_signed(directory)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    port = free_port()
    idp = Idp(base=f"https://127.0.0.1:{port}", ca_file=cert)
    app = web.Application()
    app.router.add_get("/jwks", idp.jwks)
    app.router.add_get("/redirect", idp.redirect)
    app.router.add_get("/huge", idp.huge)
    app.router.add_get("/declared-huge", idp.declared_huge)
    app.router.add_get("/slow", idp.slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield idp
    finally:
        await runner.cleanup()
