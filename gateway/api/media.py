"""Media a tenant may point the engine at.

vLLM downloads `image_url`, `audio_url`, `video_url` and `file_url` itself, from inside the
cluster, following redirects. So a remote URL is refused unless its host is on an allow-list
(the tenant's, else the gateway's; empty by default), it is `https`, carries no userinfo, and
every address its host resolves to is public. `data:` URLs are allowed, capped in size and
checked to be of the part's media kind. Every refusal is a 400 naming the field's path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from gateway.errors import InvalidRequest

HostResolver = Callable[[str], Awaitable[list[str]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Fields of a content part that name media by URL, and the media type a data: URL must have.
URL_FIELDS = {"image_url": "image", "audio_url": "audio", "video_url": "video", "file_url": None}
# Where an item holds content parts: a message's content, and a Responses tool output
# (function_call_output's `output`), which vLLM renders as a tool message's content.
PART_LISTS = ("content", "output")
# Fields that carry media inline (base64, or a data: URL): size-capped only.
INLINE_FIELDS = ("file_data", "data")
# Precomputed tensors handed to the model as is: never from a tenant. vLLM 0.32 takes them
# as these fields of a content part, and as the `data` of a part whose type is prompt_embeds.
TENSOR_FIELDS = ("image_embeds", "audio_embeds", "video_embeds")
TENSOR_PART = "prompt_embeds"


async def system_resolve(host: str) -> list[str]:
    """Every address the system resolver gives for `host` (never blocks the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class MediaRules:
    hosts: frozenset[str]  # hosts remote media may come from (lower case); empty: none
    max_data_bytes: int  # the longest data: URL or inline base64 payload, in characters
    resolve: HostResolver = system_resolve


def forbidden_address(ip: Address) -> bool:
    """Anything but a public unicast address, including v4 addresses embedded in v6 ones."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None and forbidden_address(embedded):
            return True
    return (
        ip in METADATA
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if int(ip) >> 32 == 0 or any(ip in net for net in NAT64):  # IPv4-compatible, NAT64
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def media_urls(body: dict[str, Any]) -> Iterator[tuple[str, str, object]]:
    """(path, field, value) for every media field in chat messages or Responses input."""
    for top in ("messages", "input"):
        items = body.get(top)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            yield from _part_fields(f"{top}[{i}]", item)  # a Responses input item is a part too
            for name in PART_LISTS:
                parts = item.get(name)
                if isinstance(parts, list):
                    for j, part in enumerate(parts):
                        if isinstance(part, dict):
                            yield from _part_fields(f"{top}[{i}].{name}[{j}]", part)


def _part_fields(path: str, part: dict[str, Any]) -> Iterator[tuple[str, str, object]]:
    yield from _tensor_part(path, part)
    for name in (*URL_FIELDS, *TENSOR_FIELDS, "input_audio", "file"):
        if name not in part:
            continue
        value = part[name]
        if name in ("input_audio", "file") and isinstance(value, dict):
            for inner in (*INLINE_FIELDS, "url", "file_url"):
                if inner in value:
                    yield f"{path}.{name}.{inner}", inner, value[inner]
        elif name in URL_FIELDS and isinstance(value, dict):
            yield f"{path}.{name}.url", name, value.get("url")
        else:
            yield f"{path}.{name}", name, value
    for name in INLINE_FIELDS:
        if name in part:
            yield f"{path}.{name}", name, part[name]


def _tensor_part(path: str, part: dict[str, Any]) -> Iterator[tuple[str, str, object]]:
    """A `prompt_embeds` part: by its type, or by its key under another type (vLLM reads a
    part with a uuid by its keys, whatever its type)."""
    if part.get("type") == TENSOR_PART:
        yield f"{path}.data", TENSOR_PART, part.get("data")
    elif TENSOR_PART in part:
        yield f"{path}.{TENSOR_PART}", TENSOR_PART, part[TENSOR_PART]


async def check_media(body: dict[str, Any], rules: MediaRules) -> None:
    """Raise a 400 for the first media field the rules refuse."""
    for path, field, value in media_urls(body):
        if field in TENSOR_FIELDS or field == TENSOR_PART:
            raise _refused(path, "Precomputed embeddings are not accepted.")
        if field in INLINE_FIELDS:
            if isinstance(value, str) and len(value) > rules.max_data_bytes:
                raise _refused(path, f"Inline media is capped at {rules.max_data_bytes} bytes.")
            continue
        if not isinstance(value, str):
            raise _refused(path, "Expected a URL string.")
        await check_url(path, value, URL_FIELDS.get(field), rules)


async def check_url(path: str, url: str, kind: str | None, rules: MediaRules) -> None:
    if url[:5].lower() == "data:":
        _check_data_url(path, url, kind, rules.max_data_bytes)
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise _refused(path, "The URL is malformed.") from None
    if parts.scheme.lower() != "https":
        raise _refused(path, "Only https: and data: URLs are accepted.")
    if not host:
        raise _refused(path, "The URL has no host.")
    if _has_userinfo(parts):
        raise _refused(path, "URLs with credentials (user@host) are not accepted.")
    host = host.rstrip(".")
    if not rules.hosts:
        raise _refused(path, "Remote media URLs are not enabled; send the media as a data: URL.")
    if host not in rules.hosts:
        raise _refused(path, f"Media from '{host}' is not allowed.")
    await _check_addresses(path, host, rules.resolve)


def _has_userinfo(parts: SplitResult) -> bool:
    return "@" in parts.netloc or parts.username is not None or parts.password is not None


async def _check_addresses(path: str, host: str, resolve: HostResolver) -> None:
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host)]
        except (OSError, ValueError):
            raise _refused(path, f"The host '{host}' could not be resolved.") from None
    if not found or any(forbidden_address(ip) for ip in found):
        raise _refused(path, f"The host '{host}' is not a public address.")


def _check_data_url(path: str, url: str, kind: str | None, max_bytes: int) -> None:
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise _refused(path, "The data: URL is malformed.")
    if len(data) > max_bytes:
        raise _refused(path, f"data: URLs are capped at {max_bytes} bytes.")
    media_type = header.split(";", 1)[0].strip().lower()
    if kind is not None and not media_type.startswith(f"{kind}/"):
        article = "An" if kind[0] in "aeiou" else "A"
        raise _refused(path, f"{article} {kind} data: URL's media type must be {kind}/*.")


def _refused(path: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=path, code="invalid_media_url")
