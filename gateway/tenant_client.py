"""A small client for the tenant's own /v1 API (files and fine-tuning jobs), used by the
`llmaas files` and `llmaas jobs` commands: the admin client's transport, with an API key."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.admin_client import AdminClient
from gateway.client_common import LocalProblem
from gateway.unprintable import printable

UPLOAD_TIMEOUT_S = 3600.0


class TenantClient(AdminClient):
    def __init__(self, base_url: str, api_key: str | None) -> None:
        if not api_key:
            raise LocalProblem("no API key: pass --api-key or set LLMAAS_API_KEY")
        super().__init__(base_url, api_key)
        self.base = base_url.rstrip("/") + "/v1"

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> Any:
        query = {k: str(v) for k, v in params.items() if v is not None}
        return await self.send(method, path, json=body, params=query)

    async def upload(
        self, file: Path, purpose: str, sent: Callable[[int], None] | None = None
    ) -> Any:
        """Upload `file`; `sent` is called with the size of every piece read for sending
        (from a worker thread: aiohttp reads files there)."""
        with CountedReader(io.FileIO(str(file)), sent or _nothing) as handle:
            # The name as it is (aiohttp percent-quotes it by default: `my data.jsonl` was
            # stored as `my%20data.jsonl`), its control characters made `_` as the gateway
            # makes them (aiohttp refuses them in a header: a traceback).
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("purpose", purpose)
            form.add_field("file", handle, filename=printable(file.name))
            return await self.send("POST", "/files", data=form, timeout_s=UPLOAD_TIMEOUT_S)


class CountedReader(io.BufferedReader):
    """A file whose reads are reported (an upload's progress). Still a BufferedReader, so
    aiohttp sends it with its Content-Length, as it does an open file."""

    def __init__(self, raw: io.FileIO, sent: Callable[[int], None]) -> None:
        super().__init__(raw)
        self.sent = sent

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.sent(len(data))
        return data


def _nothing(size: int) -> None:
    pass
