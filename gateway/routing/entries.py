"""Engine entries of the config: a vLLM base URL, or `dns://name:port` for every address of name.

Parsed here without other gateway imports, so that Settings can validate entries with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

DNS_SCHEME = "dns://"


@dataclass(frozen=True, slots=True)
class StaticEntry:
    url: str  # http(s)://host[:port][/path], no trailing slash


@dataclass(frozen=True, slots=True)
class DnsEntry:
    """Every A/AAAA record of `host` is an engine at http://<address>:<port>."""

    host: str
    port: int

    @property
    def text(self) -> str:
        return f"{DNS_SCHEME}{self.host}:{self.port}"


EngineEntry = StaticEntry | DnsEntry


def parse_entry(entry: str) -> EngineEntry:
    """An engine entry, or ValueError saying what is wrong with it (never quoting it: a URL may
    carry a password or a token)."""
    if entry.startswith(DNS_SCHEME):
        return _parse_dns(entry)
    if not entry.startswith(("http://", "https://")):
        raise ValueError("an engine entry is http://host:port, https://… or dns://name:port")
    parts = urlsplit(entry)
    if "@" in parts.netloc:  # sent nowhere, and shown in /metrics, the logs, `llmaas engines`
        raise ValueError("an engine URL carries no user name or password")
    if not parts.hostname:
        raise ValueError("engine URL has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        raise ValueError("engine URL has an invalid port (1-65535)") from None
    if parts.query or parts.fragment:
        raise ValueError("engine URL must not have a query or fragment")
    if parts.path.rstrip("/").endswith("/v1"):  # the gateway adds /v1/…, /health, /metrics
        raise ValueError(
            "engine URL is the engine's base URL, without /v1 (the gateway adds /v1/…, /health "
            "and /metrics)"
        )
    return StaticEntry(entry.rstrip("/"))


def _parse_dns(entry: str) -> DnsEntry:
    rest = entry[len(DNS_SCHEME) :].rstrip("/")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("a dns engine entry is dns://name:port (port 1-65535)")
    if "/" in host or "@" in host or not _is_dns_name(host):
        raise ValueError("dns engine entry has an invalid host name")
    return DnsEntry(host.lower(), int(port_text))


def _is_dns_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    )


def address_url(address: str, port: int) -> str:
    """The engine URL of one resolved address (IPv6 in brackets)."""
    if ipaddress.ip_address(address).version == 6:
        return f"http://[{address}]:{port}"
    return f"http://{address}:{port}"
