"""DNS discovery: a `dns://name:port` entry is every A/AAAA record of name (a headless Service).

The resolver is a protocol so tests can hand out the addresses they want; the real one asks
the system resolver through the event loop (never blocking it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import EngineRegistry
from gateway.routing.entries import DnsEntry, address_url


class Resolver(Protocol):
    async def resolve(self, host: str) -> list[str]:
        """Every IPv4 and IPv6 address of `host`; an error (OSError) when it cannot say."""
        ...


# The resolver's "this name has no address" (NXDOMAIN, or a name without A/AAAA records): what
# cluster DNS answers for a headless Service with no ready pod (scaled to zero). An answer,
# not a failure: the pool empties, where keeping the last pods' addresses for ever sent
# requests to whatever came to hold them.
_NO_ADDRESS = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


class SystemResolver:
    """loop.getaddrinfo: the system resolver (/etc/hosts, cluster DNS), off the event loop."""

    async def resolve(self, host: str) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            if exc.errno in _NO_ADDRESS:
                return []
            raise  # (EAI_AGAIN, a server that failed: it cannot say; the last engines stay)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Discovery:
    """Re-resolves every dns:// entry; engines that appear join their pools, those gone leave.

    A failed resolution keeps the last known engines (a DNS hiccup must not empty a pool); an
    answer with no addresses empties it. Health checks take care of engines that are gone.
    """

    def __init__(
        self,
        registry: EngineRegistry,
        resolver: Resolver,
        metrics: EngineMetrics,
        timeout_s: float,
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.log = logging.getLogger("llmaas.routing")
        self._failing: set[DnsEntry] = set()
        self._empty: set[DnsEntry] = set()  # names that resolved to no address, last time

    async def refresh(self) -> None:
        entries = self.registry.dns_entries()
        await asyncio.gather(*(self._refresh(entry) for entry in entries))

    async def _refresh(self, entry: DnsEntry) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                addresses = await self.resolver.resolve(entry.host)
            urls = sorted(address_url(address, entry.port) for address in addresses)
        except (OSError, TimeoutError, ValueError) as exc:
            self.metrics.check_failed(entry.text, "dns")
            if entry not in self._failing:
                self._failing.add(entry)
                self.log.warning(
                    "resolving %s failed (keeping its last engines): %s",
                    entry.text,
                    str(exc) or type(exc).__name__,
                )
            return
        self._failing.discard(entry)
        self._note_empty(entry, urls)
        if self.registry.set_members(entry, urls):
            self.log.info("engines of %s changed", entry.text, extra={"fields": {"engines": urls}})

    def _note_empty(self, entry: DnsEntry, urls: list[str]) -> None:
        """Warn, once until it has addresses again, of a name that resolves to none: a pool
        scaled to zero, or a typo in the name, which was otherwise silent (a pool empty from
        the start never changed, and its requests were only 503s)."""
        if urls:
            self._empty.discard(entry)
        elif entry not in self._empty:
            self._empty.add(entry)
            self.log.warning("%s resolves to no address: its pool has no engines", entry.text)
