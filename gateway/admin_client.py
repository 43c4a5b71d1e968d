"""A small client for the admin API, used by the `llmaas keys` and `llmaas tenants` commands."""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.client_common import AdminError, LocalProblem

# What the usage records pages come as (JSON lines, CSV); anything else is not the gateway.
TEXT_TYPES = frozenset({"application/x-ndjson", "text/csv"})
_NOT_THE_GATEWAY = "{} answered something else than the gateway would: is --url the gateway?"
_WHERE = " (is it running? --url / LLMAAS_URL)"


class AdminClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        if not token:
            raise LocalProblem("no admin token: pass --admin-token or set LLMAAS_ADMIN_TOKEN")
        self.url = base_url.rstrip("/")  # the gateway, as --url named it
        self.base = self.url + "/admin/v1"
        self.headers = {"authorization": f"Bearer {token}"}

    async def text(self, path: str) -> tuple[str, dict[str, str]]:
        """GET a non-JSON answer (JSON lines, CSV): its text and headers."""
        timeout = aiohttp.ClientTimeout(total=300)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http,
                http.get(self._url(path)) as resp,
            ):
                text, status, headers = await resp.text(), resp.status, dict(resp.headers)
                kind = resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.unreachable(exc, timeout.total) from exc
        if status >= 400:
            raise AdminError(_refusal(status, text))
        if kind not in TEXT_TYPES:
            raise AdminError(_NOT_THE_GATEWAY.format(self.base))
        return text, headers

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.send(method, path, json=body)

    async def send(self, method: str, path: str, *, timeout_s: float = 30, **kw: Any) -> Any:
        """One request (aiohttp's `json=`, `data=`, `params=` in `kw`); its JSON answer, or
        AdminError with the gateway's message (and the field it names)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http,
                http.request(method, self._url(path), **kw) as resp,
            ):
                text, status = await resp.text(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.unreachable(exc, timeout_s) from exc
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:  # a proxy's error page, or --url is not the gateway
            if status >= 400:
                raise AdminError(_refusal(status, text)) from None
            raise AdminError(_NOT_THE_GATEWAY.format(self.base)) from None
        if status >= 400:
            raise AdminError(_refusal(status, text))
        return payload

    def _url(self, path: str) -> URL:
        """The base and `path` (its ids made segments by `segment`) as they are sent: taken as
        encoded, or the client resolves a `.` or `..` segment (`keys revoke ..` sent
        `DELETE /admin/v1/`; found by review)."""
        return URL(str(URL(self.base)) + path, encoded=True)

    def unreachable(
        self, exc: aiohttp.ClientError | TimeoutError, timeout_s: float | None
    ) -> AdminError:
        """No answer, and why in plain words: aiohttp's own text was its jargon ("Cannot
        connect to host 127.0.0.1:1 ssl:default [Connect call failed ('127.0.0.1', 1)]")."""
        return AdminError(
            f"cannot reach the gateway at {self.url}: {why_unanswered(exc, timeout_s)}"
        )

    async def every_page(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        """Every item of an OpenAI-style list (`data`, `has_more`; the next page starts `after`
        the last item's id), page after page, in the order the pages come."""
        query = dict(params or {})
        found: list[Any] = []
        while True:
            page = await self.send("GET", path, params=query)
            found += page["data"]
            if not page.get("has_more") or not page["data"]:
                return found
            query["after"] = page["data"][-1]["id"]


def why_unanswered(exc: aiohttp.ClientError | TimeoutError, timeout_s: float | None) -> str:
    """Why a request got no answer: "connection refused", "name not resolved", "timed out"…;
    where the gateway was never reached, where to look (is it running, is --url right)."""
    if isinstance(exc, aiohttp.ClientSSLError):  # (a ClientConnectorError too: first)
        return f"TLS failed ({_tls_reason(exc)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        named = isinstance(exc.os_error, socket.gaierror)  # no such name: --url is wrong
        return _os_words(exc.os_error) + (" (is --url / LLMAAS_URL right?)" if named else _WHERE)
    if isinstance(exc, TimeoutError):  # (aiohttp's own timeouts are TimeoutErrors too)
        within = "" if timeout_s is None else f": no answer within {timeout_s:g} s"
        return "timed out" + within
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the connection closed before the whole answer came (is --url the gateway?)"
    if isinstance(exc, OSError):
        return _os_words(exc)
    return str(exc) or type(exc).__name__


def _os_words(error: OSError) -> str:
    """An OS error as the OS says it, without the address aiohttp adds."""
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno).lower()  # connection refused, no route to host, …
    return str(error) or type(error).__name__


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    """What TLS said, as far as words go: a certificate's fault, or an address that answered
    without TLS (an https:// --url of a gateway serving http://)."""
    cause = (
        exc.certificate_error
        if isinstance(exc, aiohttp.ClientConnectorCertificateError)
        else exc.os_error
    )
    reason = getattr(cause, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        return "it answered without TLS: http://, not https://?"
    return str(getattr(cause, "verify_message", None) or reason or cause)


def _refusal(status: int, text: str) -> str:
    """The gateway's message and the field it names, whatever the route answers in; any other
    answer (a proxy's error page, vLLM's {"detail": "Not Found"} at a mistyped --url) as it
    came, with the question it raises."""
    try:
        error = orjson.loads(text)["error"]
        message = str(error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return (
            f"HTTP {status}: {text.strip()[:500]} (not the gateway's answer: is --url the gateway?)"
        )
    param = error.get("param") if isinstance(error, dict) else None
    return f"HTTP {status}: {message} ({param})" if param else f"HTTP {status}: {message}"
