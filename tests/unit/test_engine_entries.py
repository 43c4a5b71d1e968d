"""Engine entries of the config: URLs and dns://name:port."""

from __future__ import annotations

import pytest

from gateway.routing.entries import DnsEntry, StaticEntry, address_url, parse_entry
from gateway.settings_load import ConfigError, load_settings


def test_urls_and_dns_entries_are_parsed() -> None:
    assert parse_entry("http://10.0.0.1:8000/") == StaticEntry("http://10.0.0.1:8000")
    assert parse_entry("https://vllm.example") == StaticEntry("https://vllm.example")
    assert parse_entry("dns://vLLM-0.engines.ns.svc.cluster.local:8000") == DnsEntry(
        "vllm-0.engines.ns.svc.cluster.local", 8000
    )
    assert DnsEntry("vllm", 8000).text == "dns://vllm:8000"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("dns://vllm", "dns://name:port"),
        ("dns://vllm:", "dns://name:port"),
        ("dns://:8000", "dns://name:port"),
        ("dns://vllm:0", "port 1-65535"),
        ("dns://vllm:70000", "port 1-65535"),
        ("dns://vllm:http", "dns://name:port"),
        ("dns://a b:80", "invalid host name"),
        ("dns://user@vllm:80", "invalid host name"),
        ("dns://vllm/x:80", "invalid host name"),
        ("vllm:8000", "is http://"),
        ("ftp://vllm", "is http://"),
        ("http://:80", "no host"),
        ("http://vllm:99999", "invalid port"),
        ("http://vllm?x=1", "query"),
        ("http://vllm:8000/v1", "without /v1"),
        ("http://vllm:8000/v1/", "without /v1"),
        ("http://user:pw@vllm:8000", "no user name or password"),
        ("http://token@vllm:8000", "no user name or password"),
    ],
)
def test_malformed_entries_are_refused_with_the_reason(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_entry(entry)


def test_settings_name_a_bad_entry_by_its_index_never_by_its_value() -> None:
    """README: `models[0].engines[1]: …`, never showing a value given (a URL may carry a
    password or a token); the path stopped at `engines` and the message quoted the entry."""
    for entry, says in [
        ("dns://vllm", "a dns engine entry is dns://name:port (port 1-65535)"),
        ("http://vllm:8000/v1?key=s3cr3t", "engine URL must not have a query or fragment"),
        ("http://admin:s3cr3t@vllm:99999", "an engine URL carries no user name or password"),
    ]:
        models = [{"name": "m", "engines": ["http://a", entry]}]
        with pytest.raises(ConfigError) as refused:
            load_settings(None, dev_mode=True, models=models)
        assert str(refused.value) == f"settings: models[0].engines[1]: {says}"
    settings = load_settings(
        None, dev_mode=True, models=[{"name": "m", "engines": ["dns://VLLM:8000", "http://a/"]}]
    )
    assert settings.models[0].engines == ["dns://vllm:8000", "http://a"]


def test_address_urls_bracket_ipv6() -> None:
    assert address_url("10.1.2.3", 8000) == "http://10.1.2.3:8000"
    assert address_url("fd00::5", 8000) == "http://[fd00::5]:8000"
