"""A small client for the admin API, used by the `llmaas keys` and `llmaas tenants` commands."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

# What the usage records pages come as (JSON lines, CSV); anything else is not the gateway.
TEXT_TYPES = frozenset({"application/x-ndjson", "text/csv"})
_NOT_THE_GATEWAY = "{} answered something else than the gateway would: is --url the gateway?"


class AdminError(Exception):
    """The admin API refused, or could not be reached; the message says which and why."""


class LocalProblem(AdminError):
    """Found before anything is sent (no token or key to send, a local file that cannot be
    read): a usage error, as a bad option is (exit 2), not the gateway's refusal (exit 1)."""


class AdminClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        if not token:
            raise LocalProblem("no admin token: pass --admin-token or set LLMAAS_ADMIN_TOKEN")
        self.base = base_url.rstrip("/") + "/admin/v1"
        self.headers = {"authorization": f"Bearer {token}"}

    async def text(self, path: str) -> tuple[str, dict[str, str]]:
        """GET a non-JSON answer (JSON lines, CSV): its text and headers."""
        timeout = aiohttp.ClientTimeout(total=300)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http,
                http.get(self.base + path) as resp,
            ):
                text, status, headers = await resp.text(), resp.status, dict(resp.headers)
                kind = resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminError(f"cannot reach the gateway at {self.base}: {exc}") from exc
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
                http.request(method, self.base + path, **kw) as resp,
            ):
                text, status = await resp.text(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminError(f"cannot reach the gateway at {self.base}: {exc}") from exc
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:  # a proxy's error page, or --url is not the gateway
            if status >= 400:
                raise AdminError(_refusal(status, text)) from None
            raise AdminError(_NOT_THE_GATEWAY.format(self.base)) from None
        if status >= 400:
            raise AdminError(_refusal(status, text))
        return payload

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


def segment(value: str) -> str:
    """An id as one segment of a path: `/`, `?`, `#` and `..` in it stay in it."""
    return quote(value, safe="")


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
