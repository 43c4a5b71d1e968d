"""Small network helpers shared by the launcher, the simulator and the tests."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time

import aiohttp

# A DNS name: dot-separated labels of letters, digits, hyphens (and the underscores some
# names carry), none empty or over 63 characters, none starting or ending with a hyphen.
_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")


def media_host(host: str) -> str:
    """A host remote media may come from, as lists hold it (lower case, no brackets or final
    dot). An IP literal must be a public address (the media check refuses every other, so
    listing one could only be a mistake): ValueError names it."""
    host = host.strip().lower().strip("[]").rstrip(".")
    written = ""  # how an address written another way reads in the usual form
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        legacy = _legacy_ipv4(host)  # 2130706433, 0x7f000001, 127.1: what resolvers take
        if legacy is None:
            if not _NAME.fullmatch(host):
                raise ValueError(f"'{host}' is neither a host name nor an IP address") from None
            return host  # a name: its addresses are checked when a request uses it
        if legacy.is_global:
            raise ValueError(
                f"'{host}' is {legacy} written another way: list it as {legacy}"
            ) from None
        literal, written = legacy, f" {legacy},"
    if not literal.is_global:
        raise ValueError(
            f"'{host}' is{written} not a public address: media from it is always refused"
        )
    return host


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address an IPv4 literal in a form inet_aton takes (a number, hex or octal parts,
    fewer than four parts) stands for; None for a name."""
    if not re.fullmatch(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_http_ok(url: str, *, timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll `url` until it answers 200; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    client_timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f}s")
            await asyncio.sleep(interval_s)
