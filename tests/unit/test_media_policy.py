"""Which media URLs a tenant may send: schemes, hosts, addresses, data: URLs."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.api.media import MediaRules, check_media, forbidden_address, media_urls
from gateway.errors import InvalidRequest

PUBLIC = "93.184.215.14"
ALLOWED = frozenset({"cdn.example.com", "localhost", "rebind.example.com"})
NAMES = {"cdn.example.com": [PUBLIC], "localhost": ["127.0.0.1", "::1"]}


async def fake_resolve(host: str) -> list[str]:
    if host == "rebind.example.com":  # one public, one private address: still refused
        return [PUBLIC, "10.1.2.3"]
    if host not in NAMES:
        raise OSError(f"no such host {host}")
    return NAMES[host]


RULES = MediaRules(ALLOWED, max_data_bytes=1000, resolve=fake_resolve)


def chat(part: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]}


def image(url: str) -> dict[str, Any]:
    return chat({"type": "image_url", "image_url": {"url": url}})


async def refusal(body: dict[str, Any], rules: MediaRules = RULES) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        await check_media(body, rules)
    assert info.value.status_code == 400
    return info.value


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_not(address: str) -> None:
    assert not forbidden_address(ipaddress.ip_address(address))


async def test_an_allowed_public_host_passes() -> None:
    await check_media(image("https://cdn.example.com/cat.png"), RULES)
    await check_media(image("https://CDN.example.com./cat.png"), RULES)  # case, trailing dot


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://cdn.example.com/cat.png", "Only https"),
        ("file:///etc/passwd", "Only https"),
        ("ftp://cdn.example.com/cat.png", "Only https"),
        ("gopher://cdn.example.com/", "Only https"),
        ("https://user:pass@cdn.example.com/cat.png", "credentials"),
        ("https://cdn.example.com@10.0.0.1/cat.png", "credentials"),
        ("https://other.example.com/cat.png", "not allowed"),
        ("https://localhost/cat.png", "not a public address"),
        ("https://rebind.example.com/cat.png", "not a public address"),
        ("https:///cat.png", "no host"),
        ("https://[::1/cat.png", "malformed"),
    ],
)
async def test_refused_urls_name_the_field(url: str, words: str) -> None:
    err = await refusal(image(url))
    assert err.param == "messages[0].content[1].image_url.url"
    assert words in err.message


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "[fd00:ec2::254]"],
)
async def test_literal_addresses_are_checked_even_when_allow_listed(host: str) -> None:
    bare = host.strip("[]")
    rules = MediaRules(frozenset({bare}), 1000, fake_resolve)
    err = await refusal(image(f"https://{host}/x.png"), rules)
    assert "not a public address" in err.message


async def test_an_unresolvable_allowed_host_is_refused() -> None:
    rules = MediaRules(frozenset({"gone.example.com"}), 1000, fake_resolve)
    err = await refusal(image("https://gone.example.com/x.png"), rules)
    assert "could not be resolved" in err.message


async def test_remote_media_is_off_without_an_allow_list() -> None:
    err = await refusal(image("https://cdn.example.com/cat.png"), MediaRules(frozenset(), 1000))
    assert "not enabled" in err.message


async def test_data_urls_are_capped_and_typed() -> None:
    await check_media(image("data:image/png;base64," + "A" * 1000), RULES)
    too_big = await refusal(image("data:image/png;base64," + "A" * 1001))
    assert "capped at 1000" in too_big.message
    html = await refusal(image("data:text/html;base64,PGgxPg=="))
    assert "image/*" in html.message
    audio = chat({"type": "audio_url", "audio_url": {"url": "data:image/png;base64,AA=="}})
    assert (await refusal(audio)).param == "messages[0].content[1].audio_url.url"
    assert "malformed" in (await refusal(image("data:image/png;base64"))).message


async def test_inline_media_is_capped() -> None:
    audio = chat({"type": "input_audio", "input_audio": {"data": "A" * 1001, "format": "wav"}})
    assert (await refusal(audio)).param == "messages[0].content[1].input_audio.data"
    file = chat({"type": "file", "file": {"file_data": "A" * 1001}})
    assert (await refusal(file)).param == "messages[0].content[1].file.file_data"
    await check_media(chat({"type": "file", "file": {"file_id": "file-1"}}), RULES)


async def test_precomputed_embeddings_are_refused() -> None:
    for kind in ("image_embeds", "audio_embeds", "video_embeds"):
        err = await refusal(chat({"type": kind, kind: "AAAA"}))
        assert err.param == f"messages[0].content[1].{kind}"
    # vLLM 0.32's prompt-embeddings part: a serialised tensor in `data`, inline media's name.
    err = await refusal(chat({"type": "prompt_embeds", "data": "AAAA"}))
    assert err.param == "messages[0].content[1].data"
    assert "Precomputed embeddings" in err.message


async def test_responses_input_items_are_checked() -> None:
    body: dict[str, Any] = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this"},
                    {"type": "input_image", "image_url": "https://10.0.0.1/x.png"},
                ],
            }
        ]
    }
    assert (await refusal(body)).param == "input[0].content[1].image_url"
    file_url = {"input": [{"type": "input_file", "file_url": "http://cdn.example.com/a.pdf"}]}
    assert (await refusal(file_url)).param == "input[0].file_url"
    # A tool's output may hold parts too; vLLM renders them, media and all, as a tool message.
    for kind in ("function_call_output", "custom_tool_call_output"):
        output: dict[str, Any] = {
            "input": [
                {
                    "type": kind,
                    "call_id": "call_1",
                    "output": [{"type": "input_image", "image_url": "https://10.0.0.1/x.png"}],
                }
            ]
        }
        assert (await refusal(output)).param == "input[0].output[0].image_url"


def test_every_media_field_is_found() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "plain text"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": "https://a/simple-form"},
                    {"type": "video_url", "video_url": {"url": "https://a/v"}},
                ],
            },
        ]
    }
    found = [(path, field) for path, field, _ in media_urls(body)]
    assert found == [
        ("messages[1].content[0].image_url", "image_url"),
        ("messages[1].content[1].video_url.url", "video_url"),
    ]
