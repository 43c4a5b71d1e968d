"""`llmaas keys` and `llmaas tenants` as a user runs them, against a real gateway and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.cli_table import display_width
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL, AuthStack
from tests.integration.sim_fixture import running_sim
from tests.support.cli import llmaas as entry_point
from tests.support.cli import run_llmaas
from tests.support.gateways import ADMIN_TOKEN
from tests.support.servers import serve_asgi
from tests.support.usage_records import ledger_records

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def llmaas(auth: AuthStack, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    return await run_llmaas(auth.gateway, *args, token=token)


async def llmaas_json(auth: AuthStack, *args: str) -> Any:
    code, out, err = await llmaas(auth, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_keys_list_reads_every_page(auth: AuthStack) -> None:
    """The API answers 1,000 keys a page; `keys list` follows the pages to the last."""
    made: list[str] = []
    for _ in range(21):  # 1,008 keys, 48 at a time
        made += await asyncio.gather(*(auth.new_key(tenant="cli-many") for _ in range(48)))
    listed = await llmaas_json(auth, "keys", "list", "--tenant", "cli-many")
    ids = [k["id"] for k in listed["data"]]
    assert sorted(ids) == sorted(k.split("-")[2] for k in made)  # each once


async def test_keys_list_active_leaves_out_revoked_and_expired_keys(auth: AuthStack) -> None:
    """Revoked and expired keys stay listed for good: after months of rotations a listing was
    mostly dead keys, with no way to leave them out. A page of only dead keys is passed over,
    not answered empty (its cursor would be lost)."""
    made = [(await auth.new_key(tenant="cli-active")).split("-")[2] for _ in range(3)]
    soon = datetime.fromtimestamp(time.time() + 1.5, UTC).isoformat()
    made.append((await auth.new_key(tenant="cli-active", expires_at=soon)).split("-")[2])
    made.append((await auth.new_key(tenant="cli-active")).split("-")[2])
    for key_id in made[:3]:
        assert (await auth.admin("DELETE", f"/keys/{key_id}"))[0] == 200
    await asyncio.sleep(max(0.0, datetime.fromisoformat(soon).timestamp() - time.time()) + 0.1)
    listed = await llmaas_json(auth, "keys", "list", "--tenant", "cli-active", "--active")
    assert [k["id"] for k in listed["data"]] == made[4:]
    everything = await llmaas_json(auth, "keys", "list", "--tenant", "cli-active")
    assert [k["id"] for k in everything["data"]] == made
    status, page = await auth.admin("GET", "/keys?tenant=cli-active&active=true&limit=1")
    assert status == 200, page
    assert ([k["id"] for k in page["data"]], page["has_more"]) == (made[4:], False)
    code, out, _ = await llmaas(auth, "keys", "list", "--help")
    assert code == 0
    assert "--active" in out


async def test_keys_list_lines_up_a_key_named_in_wide_characters(auth: AuthStack) -> None:
    """Found by review 2026-12-06: a key named 日本語チーム (two terminal columns a character)
    shifted every column after it in `keys list`: the table padded by len()."""
    for name in ("日本語チーム", "ops"):
        code, _, err = await llmaas(auth, "keys", "create", "--tenant", "cli-wide", "--name", name)
        assert code == 0, err
    code, out, err = await llmaas(auth, "keys", "list", "--tenant", "cli-wide")
    assert code == 0, err
    lines = out.splitlines()
    starts = {
        display_width(line[: line.index(last)])
        for line, last in zip(lines, ["revoked", "false", "false"], strict=True)
    }
    assert len(starts) == 1, out  # the revoked column starts at one place in each line


async def test_tenants_list_reads_every_page(auth: AuthStack) -> None:
    made = [f"cli-t{i:04d}" for i in range(1005)]
    for start in range(0, len(made), 48):
        await asyncio.gather(
            *(auth.admin("PUT", f"/tenants/{t}", {"rpm": 1}) for t in made[start : start + 48])
        )
    listed = await llmaas_json(auth, "tenants", "list")
    assert set(made) <= {t["id"] for t in listed["data"]}


async def test_key_lifecycle_through_the_cli(auth: AuthStack) -> None:
    created = await llmaas_json(
        auth,
        "keys",
        "create",
        "--tenant",
        "cli",
        "--name",
        "laptop",
        "--rpm",
        "5",
        "--models",
        "a,b",
    )
    assert created["key"].startswith("sk-llmaas-")
    assert created["rpm"] == 5
    assert created["models"] == ["a", "b"]

    code, table, _ = await llmaas(auth, "keys", "list", "--tenant", "cli")
    assert code == 0
    assert table.splitlines()[0].split()[:3] == ["id", "tenant", "name"]
    assert table.splitlines()[0].split()[-2:] == ["revoked", "created_at"]
    assert table.splitlines()[1].split()[-2] == "false"  # as --json says (it was False)
    assert created["id"] in table
    assert "laptop" in table
    assert "a,b" in table

    changed = await llmaas_json(
        auth, "keys", "update", created["id"], "--rpm", "none", "--tpm", "900", "--models", "c"
    )
    assert (changed["rpm"], changed["tpm"], changed["models"]) == (None, 900, ["c"])
    assert (changed["name"], changed["max_concurrency"]) == ("laptop", None)  # left as they were
    changed = await llmaas_json(
        auth,
        "keys",
        "update",
        created["id"],
        "--every-model",
        "--name",
        "",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    )
    assert (changed["models"], changed["name"], changed["tpm"]) == (None, None, 900)
    assert changed["expires_at"] == "2099-01-01T00:00:00Z"
    changed = await llmaas_json(auth, "keys", "update", created["id"], "--expires-at", "never")
    assert changed["expires_at"] is None
    code, table, _ = await llmaas(auth, "keys", "update", created["id"], "--max-concurrency", "2")
    assert code == 0
    assert table.splitlines()[0].split()[:3] == ["id", "tenant", "name"]
    assert created["id"] in table

    rotated = await llmaas_json(auth, "keys", "rotate", created["id"])
    assert rotated["key"] != created["key"]
    # the whole key, pasted as a leaked one is: its id is sent, never its secret
    code, out, err = await llmaas(auth, "keys", "revoke", rotated["key"], "--json")
    assert code == 0, err
    assert json.loads(out)["revoked"] is True
    secret = rotated["key"].rsplit("-", 1)[1]
    assert secret not in out + err
    code, _, err = await llmaas(auth, "keys", "rotate", "sk-llmaas-not-whole")
    assert code == 2
    assert "is not a whole key" in err


async def test_tenants_through_the_cli(auth: AuthStack) -> None:
    tenant = await llmaas_json(
        auth, "tenants", "set", "cli-t", "--tpm", "1000", "--max-concurrency", "3"
    )
    assert tenant["tpm"] == 1000
    assert tenant["max_concurrency"] == 3
    assert tenant["rpm"] is None
    code, table, _ = await llmaas(auth, "tenants", "list")
    assert code == 0
    assert "cli-t" in table
    assert "1000" in table
    disabled = await llmaas_json(auth, "tenants", "update", "cli-t", "--disable")
    assert (disabled["disabled"], disabled["tpm"]) == (True, 1000)
    code, table, _ = await llmaas(auth, "tenants", "list")
    assert "disabled" in table.splitlines()[0]
    enabled = await llmaas_json(auth, "tenants", "update", "cli-t", "--enable")
    assert enabled["disabled"] is False
    code, _, err = await llmaas(auth, "tenants", "update", "cli-t", "--disable", "--enable")
    assert code == 2
    assert "not allowed with argument" in err
    # as update takes it: the gateway's list, not a host named "default"
    tenant = await llmaas_json(auth, "tenants", "set", "cli-t", "--media-hosts", "default")
    assert tenant["media_hosts"] is None


async def _works(auth: AuthStack, key: str) -> bool:
    async with auth.http.get(
        f"{auth.gateway}/v1/models", headers={"authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status in (200, 401), resp.status
        return resp.status == 200


async def test_a_deleted_tenant_keeps_its_usage_and_none_of_its_keys(auth: AuthStack) -> None:
    """Found 2026-12-07: a tenant could not be deleted: a customer that left kept its keys
    working and its record for good. `tenants delete` revokes every key, removes the tenant's
    settings and key listing, keeps its usage records; the id set again is a new tenant."""
    await llmaas_json(auth, "tenants", "set", "cli-gone", "--tpm", "5000")
    keys = [await auth.new_key(tenant="cli-gone") for _ in range(3)]
    assert (await auth.admin("DELETE", f"/keys/{keys[2].split('-')[2]}"))[0] == 200
    async with auth.client(keys[0]) as oai:
        await oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert auth.settings.redis_url is not None
    async with asyncio.timeout(30):  # (polling Redis)
        while not await ledger_records(auth.settings.redis_url, "cli-gone"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    code, out, err = await llmaas(auth, "tenants", "delete", "cli-gone")
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["id", "models"]  # the tenant, as it was
    assert "5000" in out.splitlines()[1]
    assert "keys revoked: 2 (its usage records are kept)" in out  # the third was already
    assert [await _works(auth, k) for k in keys] == [False, False, False]
    for key in keys:
        status, record = await auth.admin("GET", f"/keys/{key.split('-')[2]}")
        assert (status, record["revoked"]) == (200, True)
    status, body = await auth.admin("GET", "/tenants/cli-gone")
    assert (status, body["error"]["code"]) == (404, "tenant_not_found")
    listed = await llmaas_json(auth, "tenants", "list")
    assert "cli-gone" not in {t["id"] for t in listed["data"]}
    assert (await llmaas_json(auth, "keys", "list", "--tenant", "cli-gone"))["data"] == []
    code, out, err = await run_llmaas(
        auth.gateway, "usage", "--tenant", "cli-gone", "--json", token=ADMIN_TOKEN
    )
    assert code == 0, err
    assert [row["requests"] for row in json.loads(out)["data"]] == [1]
    code, _, err = await llmaas(auth, "tenants", "delete", "cli-gone")
    assert code == 1
    assert "No tenant 'cli-gone'" in err

    fresh = await llmaas_json(auth, "tenants", "set", "cli-gone", "--rpm", "7")
    assert (fresh["rpm"], fresh["tpm"]) == (7, None)
    assert [await _works(auth, k) for k in keys] == [False, False, False]  # revoked for good
    assert (await llmaas_json(auth, "keys", "list", "--tenant", "cli-gone"))["data"] == []
    deleted = await llmaas_json(auth, "tenants", "delete", "cli-gone")
    assert (deleted["id"], deleted["rpm"], deleted["deleted"]) == ("cli-gone", 7, True)
    assert deleted["keys_revoked"] == 0


async def test_keys_create_says_when_it_creates_the_tenant(auth: AuthStack) -> None:
    """Found 2026-12-07: `keys create --tenant acmee` (a typo) made a new tenant without a
    word, its key under none of acme's limits. The quick start still creates tenants so; the
    answer says `tenant_created` and the CLI a line on stderr."""
    await llmaas_json(auth, "tenants", "set", "cli-acme", "--tpm", "1000")
    code, out, err = await llmaas(auth, "keys", "create", "--tenant", "cli-acme", "--json")
    assert code == 0, err
    assert (json.loads(out)["tenant_created"], err) == (False, "")
    code, out, err = await llmaas(auth, "keys", "create", "--tenant", "cli-acmee")
    assert code == 0, err
    assert "key (shown once): sk-llmaas-" in out
    assert "new tenant 'cli-acmee' created, with the default limits" in err, err
    assert "limits.tenant_defaults" in err
    code, out, err = await llmaas(auth, "keys", "create", "--tenant", "cli-acmee", "--json")
    assert (code, json.loads(out)["tenant_created"], err) == (0, False, "")
    status, body = await auth.admin("POST", "/keys", {"tenant": "cli-new"})
    assert (status, body["tenant_created"]) == (201, True)


async def test_tenants_update_changes_only_what_it_names(auth: AuthStack) -> None:
    """`tenants set` replaces every setting: raising a tenant's tpm with it dropped the
    tenant's model allow-list (every model, at once) and its other limits. `tenants update`
    changes what its options name; none lifts, default gives the media hosts back."""
    await llmaas_json(
        auth, "tenants", "set", "cli-u", "--models", "a,b", "--rpm", "60", "--media-hosts", "x.io"
    )
    changed = await llmaas_json(auth, "tenants", "update", "cli-u", "--tpm", "5000")
    assert (changed["tpm"], changed["rpm"], changed["models"]) == (5000, 60, ["a", "b"])
    assert changed["media_hosts"] == ["x.io"]
    changed = await llmaas_json(
        auth,
        "tenants",
        "update",
        "cli-u",
        "--rpm",
        "none",
        "--priority",
        "-1",
        "--media-hosts",
        "default",
        "--every-model",
    )
    assert (changed["rpm"], changed["priority"], changed["media_hosts"]) == (None, -1, None)
    assert (changed["models"], changed["tpm"]) == (None, 5000)
    changed = await llmaas_json(
        auth, "tenants", "update", "cli-u", "--priority", "none", "--media-hosts", ""
    )
    assert (changed["priority"], changed["media_hosts"], changed["tpm"]) == (None, [], 5000)
    code, table, _ = await llmaas(auth, "tenants", "update", "cli-u", "--models", "c")
    assert code == 0
    assert "cli-u" in table.splitlines()[1]
    code, _, err = await llmaas(auth, "tenants", "update", "nobody-here", "--tpm", "5")
    assert code == 1
    assert "No tenant 'nobody-here'" in err  # (update creates no tenant; set does)
    code, _, err = await llmaas(auth, "tenants", "update", "cli-u", "--tpm", "lots")
    assert code == 2
    assert "argument --tpm: 'lots' is neither a whole number nor none" in err


async def test_cli_errors_are_clear(auth: AuthStack) -> None:
    code, _, err = await llmaas(auth, "keys", "list", token="wrong-token")
    assert code == 1
    assert "HTTP 401" in err
    # a limit of 0 and an empty model name were the gateway's 400 (exit 1), or dropped (`a,,b`
    # allowed a and b): usage errors, naming the option, before anything is sent
    refused: list[tuple[tuple[str, ...], str]] = [
        (("--rpm", "0"), "argument --rpm: must be 1 to 9007199254740991, got 0"),
        (("--tpm", "-5"), "argument --tpm: must be 1 to 9007199254740991, got -5"),
        (("--models", "a,,b"), "argument --models: 'a,,b' has an empty model name"),
        (("--models", "a,"), "argument --models: 'a,' has an empty model name"),
    ]
    for args, said in refused:
        code, _, err = await llmaas(auth, "keys", "create", "--tenant", "cli-refused", *args)
        assert code == 2, args
        assert said in err, err
    refused = [
        (("--rpm", "many"), "argument --rpm: 'many' is neither a whole number nor none"),
        (("--max-concurrency", "0"), "argument --max-concurrency: must be 1 to"),
        (("--models", " , a"), "argument --models: ' , a' has an empty model name"),
        (("--models", "a", "--every-model"), "--every-model: not allowed with argument --models"),
    ]
    for args, said in refused:
        code, _, err = await llmaas(auth, "keys", "update", "x", *args)
        assert code == 2, args
        assert said in err, err
    code, _, err = await llmaas(
        auth, "tenants", "update", "cli-refused", "--priority", "2147483648"
    )
    assert code == 2
    assert "argument --priority: must be -2147483648 to 2147483647, got 2147483648" in err, err
    for action in ("set", "update"):
        code, _, err = await llmaas(
            auth, "tenants", action, "cli-refused", "--media-hosts", "a.test,,b"
        )
        assert code == 2, action
        assert "error: --media-hosts: 'a.test,,b' has an empty host name" in err, err
    assert await llmaas_json(auth, "keys", "list", "--tenant", "cli-refused") == {
        "object": "list",
        "data": [],
    }
    code, _, err = await llmaas(auth, "keys", "update", "000000000000", "--rpm", "5")
    assert code == 1
    assert "000000000000" in err
    # the ids were the gateway's 404 'Unknown path'; an empty filter (an unset variable)
    # filtered nothing: every tenant's keys or usage
    empty: list[tuple[tuple[str, ...], str]] = [
        (("keys", "rotate", ""), "key_id"),
        (("keys", "revoke", " "), "key_id"),
        (("keys", "update", ""), "key_id"),
        (("tenants", "set", ""), "tenant_id"),
        (("keys", "list", "--tenant", ""), "--tenant"),
        (("usage", "--tenant", ""), "--tenant"),
        (("usage", "--key-id", ""), "--key-id"),
        (("usage", "--model", " "), "--model"),
    ]
    for words, name in empty:
        code, _, err = await llmaas(auth, *words)
        assert code == 2, words
        assert f"argument {name}: cannot be empty" in err


def _html(status: int) -> Any:
    """A server that answers an HTML page: a load balancer's error page (the gateway away), or
    a web site at a mistyped --url."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"<html><h1>Bad Gateway</h1></html>"})

    return app


async def test_an_answer_that_is_not_json_is_an_error_not_a_traceback() -> None:
    for status, said in (
        (502, "HTTP 502: <html><h1>Bad Gateway</h1></html> (not the gateway's answer: is --url"),
        (200, "is --url the gateway?"),
    ):
        async with serve_asgi(_html(status), lifespan="off") as url:
            for args in (
                ("keys", "list"),
                ("tenants", "list"),
                ("usage",),
                ("engines",),
                ("usage", "--records"),
            ):
                code, _, err = await run_llmaas(url, *args, token=ADMIN_TOKEN)
                assert (code, "Traceback" in err, said in err) == (1, False, True), err


async def test_a_json_answer_not_the_gateways_asks_whether_url_is_the_gateway() -> None:
    """--url at a vLLM engine (the port beside the gateway's) printed its {"detail": "Not
    Found"} as the whole explanation."""
    async with running_sim(SimConfig()) as sim:
        for args in (("keys", "list"), ("usage", "--records")):
            code, _, err = await run_llmaas(sim, *args, token=ADMIN_TOKEN)
            assert code == 1
            said = 'HTTP 404: {"detail":"Not Found"} (not the gateway\'s answer: is --url'
            assert said in err, err


async def test_a_reader_gone_stops_the_command_quietly(auth: AuthStack) -> None:
    """`llmaas engines --json | head`: the pipe's reader has closed before the command writes
    (closed here before it starts, so its write fails): no traceback, the shell's status for
    a SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            entry_point(),
            *("engines", "--json", "--url", auth.gateway, "--admin-token", ADMIN_TOKEN),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + signal.SIGPIPE, err.decode()
    assert err == b""


async def test_ids_stay_in_their_segment_and_the_printed_v1_url_is_taken(auth: AuthStack) -> None:
    """The base URL `llmaas up` prints ends in /v1: the commands take it as the gateway's. An
    id is one path segment: "nope/../<id>" names no key (it used to revoke <id>). An allow-list
    of nothing reads "(none)", not the "-" of a key without one (every model)."""
    created = await llmaas_json(auth, "keys", "create", "--tenant", "cli-seg", "--models", "")
    assert created["models"] == []
    listed = "keys", "list", "--tenant", "cli-seg"
    code, table, err = await run_llmaas(f"{auth.gateway}/v1/", *listed, token=ADMIN_TOKEN)
    assert code == 0, err
    row = next(line for line in table.splitlines() if created["id"] in line)
    assert "(none)" in row.split()
    code, _, err = await llmaas(auth, "keys", "revoke", f"nope/../{created['id']}")
    assert code == 1
    assert "HTTP 404" in err
    assert (await llmaas_json(auth, *listed))["data"][0]["revoked"] is False
    # `..` was a segment the client resolved: `keys revoke ..` sent DELETE /admin/v1/
    code, _, err = await llmaas(auth, "keys", "revoke", "..")
    assert (code, err) == (1, "llmaas keys revoke: HTTP 404: No API key with id '..'. (id)\n")
    code, _, err = await llmaas(auth, "tenants", "update", "..", "--rpm", "5")
    assert (code, err) == (  # the tenant id's rule, in words (pydantic's regex was shown)
        1,
        "llmaas tenants update: HTTP 400: Invalid 'tenant_id': 1 to 64 letters, digits, '.', "
        "'_' or '-', the first a letter or digit. (tenant_id)\n",
    )
    code, _, err = await run_llmaas("notaurl", *listed, token=ADMIN_TOKEN)
    assert code == 2
    assert "not an http:// or https:// address of the gateway: 'notaurl'" in err
    # A password in the URL was a traceback (aiohttp will not send it beside the token).
    code, _, err = await run_llmaas("http://u:pw-secret@127.0.0.1:9", *listed, token=ADMIN_TOKEN)
    assert code == 2
    assert "carries no user or password" in err
    assert "pw-secret" not in err
    # From LLMAAS_URL, the error named --url, which was not given
    proc = await asyncio.create_subprocess_exec(
        entry_point(), *listed, stderr=asyncio.subprocess.PIPE, env={"LLMAAS_URL": "notaurl"}
    )
    _, said = await proc.communicate()
    assert proc.returncode == 2
    assert b"LLMAAS_URL (no --url given): not an http:// or https:// address" in said
