"""`llmaas serve` as a real process: several workers, aggregated metrics, clear config errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port, wait_http_ok
from gateway.redis_client import NO_PASSWORD
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim_process
from tests.support.cli import llmaas, run_cli
from tests.support.gateways import (
    OPS,
    admin_request,
    gateway_process,
    serve_command,
    shared_config,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_two_workers_serve_and_metrics_add_up(tmp_path: Path) -> None:
    temporary = tmp_path / "tmp"  # where the supervisor makes its directories
    temporary.mkdir()
    async with running_sim_process(SimConfig(models=["m"])) as sim:
        config = tmp_path / "gw.yaml"
        config.write_text(
            "access_log: false\nadmin_token: serve-cli-admin-token\nauth: {required: false}\n"
            f"models:\n  - name: m\n    engines: [{sim}]\n"
            f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"  # never the one under the home
        )
        workers = gateway_process(config, "--workers", "2", env={"TMPDIR": str(temporary)})
        async with workers as served:
            # (and the config file's copy its workers read: PinnedConfig)
            made = sorted(p.name[:-8] for p in temporary.iterdir())  # (mkdtemp adds 8)
            assert made == ["llmaas-config-", "llmaas-metrics-"]
            base = served.url
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as http:
                for _ in range(3):  # new connections, so both workers are likely to answer
                    async with aiohttp.ClientSession() as fresh:
                        replies = [
                            fresh.post(f"{base}/v1/chat/completions", json=body) for _ in range(10)
                        ]
                        for reply in await asyncio.gather(*replies):
                            assert reply.status == 200
                            reply.release()
                ops = {"authorization": "Bearer serve-cli-admin-token"}
                async with http.get(f"{base}/metrics", headers=ops) as resp:
                    text = await resp.text()
            served.process.send_signal(signal.SIGTERM)  # a clean stop of every worker
            assert await asyncio.wait_for(served.process.wait(), 30) == -signal.SIGTERM
    assert list(temporary.iterdir()) == []  # (each run left its directory behind)
    line = re.search(
        r'^llmaas_requests_total\{model="m",route="chat/completions",status="200"\} (\S+)$',
        text,
        re.M,
    )
    assert line is not None
    assert float(line.group(1)) == 30.0


async def health_on(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """GET /healthz on a kept-alive connection: True when answered 200, False when closed."""
    reader, writer = conn
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def test_idle_client_connections_close_after_keep_alive_s(tmp_path: Path) -> None:
    """keep_alive_s reaches uvicorn; the default outlasts uvicorn's own 5 s (and httpx's)."""
    base = (
        "access_log: false\nadmin_token: serve-cli-admin-token\nauth: {required: false}\n"
        f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"
    )
    short, default = tmp_path / "short.yaml", tmp_path / "default.yaml"
    short.write_text(base + "keep_alive_s: 0.5\n")
    default.write_text(base)
    async with gateway_process(short) as quick, gateway_process(default) as patient:
        conns = [
            await asyncio.open_connection("127.0.0.1", int(g.url.rsplit(":", 1)[1]))
            for g in (quick, patient)
        ]
        try:
            assert [await health_on(c) for c in conns] == [True, True]
            assert await closed_by_server(conns[0][0], 3)  # idle 0.5 s: closed (not at 5)
            assert not await closed_by_server(conns[1][0], 6.5)  # idle > 5 s: still open
            assert await health_on(conns[1])  # and serving
        finally:
            for _, writer in conns:
                writer.close()


async def test_a_gateway_on_the_ipv6_any_address_answers_ipv6_clients(tmp_path: Path) -> None:
    """`host: "::"`, what the chart's `listenAddress` gives on an IPv6-only cluster (IPv6
    only: asyncio's servers set IPV6_V6ONLY)."""
    config = tmp_path / "gw.yaml"
    spill = tmp_path / "spill"
    config.write_text(
        "access_log: false\nadmin_token: serve-cli-admin-token\nauth: {required: false}\n"
        f'host: "::"\nmetering: {{spill_dir: {spill}}}\n'
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config, "--port", str(port)), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_http_ok(f"http://[::1]:{port}/healthz", timeout_s=30)
    finally:
        proc.terminate()
        await proc.wait()


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within_s) == b""
    except TimeoutError:
        return False


async def serve_fails(config: Path, env: dict[str, str] | None = None) -> tuple[int | None, bytes]:
    """Run `llmaas serve --config` expecting it to refuse; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await proc.communicate()
    return proc.returncode, err


async def test_a_misspelt_variable_or_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    """A top-level LLMAAS_* name that is no setting (one `_` for `__`) was ignored, the default
    kept; a second `limits:` in a file replaced the first. Both started the gateway."""
    config = tmp_path / "gw.yaml"
    config.write_text("dev_mode: true\n")
    env = {"PATH": "/usr/bin:/bin", "LLMAAS_UPSTREAM_RESPONSE_TIMEOUT_S": "30", "LLMAAS_URL": "x"}
    code, err = await serve_fails(config, env=env)
    assert (code, err.decode()) == (
        2,
        "llmaas serve: invalid configuration: environment: LLMAAS_UPSTREAM_RESPONSE_TIMEOUT_S: "
        "not a setting (did you mean LLMAAS_UPSTREAM__RESPONSE_TIMEOUT_S?)\n",
    )
    for given, meant in (  # a guess that is itself no setting was given (found 2026-12-07)
        ("LLMAAS_UPSTREAM_CONECT_TIMEOUT_S", " (did you mean LLMAAS_UPSTREAM__CONNECT_TIMEOUT_S?)"),
        ("LLMAAS_LIMITS_NOTHING_LIKE", ""),
    ):
        code, err = await serve_fails(config, env={"PATH": "/usr/bin:/bin", given: "1"})
        assert (code, err.decode()) == (
            2,
            f"llmaas serve: invalid configuration: environment: {given}: not a setting{meant}\n",
        )
    config.write_text(
        "limits: {failure_mode: open}\ndev_mode: true\nlimits: {timeout_s: 2}\nport: 99999\n"
    )
    code, err = await serve_fails(config)  # said with the file's other wrong fields
    assert (code, err.decode()) == (
        2,
        f"llmaas serve: invalid configuration: {config}:\n"
        "  line 3: 'limits' is given twice\n"
        "  port: Input should be less than or equal to 65535\n",
    )


async def test_up_refuses_a_bad_setting_before_it_starts_anything(tmp_path: Path) -> None:
    """`llmaas up` built its settings once Redis and the engine were up (minutes), then ended
    in a traceback quoting the value: the tail of an HMAC secret was printed."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LLMAAS_AUTH__JWT__HMAC_SECRET": "supersecretvalue123",
        "LLMAAS_AUTH__JWT__ALGORITHMS": '["HS256"]',
        "LLMAAS_AUTH__JWT__ISSUER": "i",
        "LLMAAS_AUTH__JWT__AUDIENCE": "a",
    }
    home, data = tmp_path / "home", tmp_path / "data"
    up = [llmaas(), "up", "--home", str(home), "--data-dir", str(data)]
    proc = await asyncio.create_subprocess_exec(*up, stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, err.decode()) == (
        2,
        "llmaas up: invalid configuration: environment (LLMAAS_AUTH__JWT__HMAC_SECRET): "
        "auth.jwt: auth.jwt.hmac_secret must be at least 32 bytes for HS256\n",
    )
    assert not home.exists()  # nothing prepared, started or written
    assert not data.exists()


async def test_workers_that_cannot_bind_their_port_leave_no_metrics_directory(
    tmp_path: Path,
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    config = tmp_path / "gw.yaml"
    config.write_text(f"dev_mode: true\nmetering: {{spill_dir: {tmp_path / 'spill'}}}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = await asyncio.create_subprocess_exec(
            *serve_command(config, "--port", port, "--workers", "2"),
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(temporary)},
        )
        _, err = await proc.communicate()
    assert proc.returncode != 0, err
    assert list(temporary.iterdir()) == []  # (one was left per attempt)


async def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("dev_mode: true\nmodels:\n  - name: m\n    engines: [localhost:8000]\n")
    code, err = await serve_fails(config)
    assert code == 2
    assert b"models[0].engines" in err
    assert b"http://" in err
    assert b"Traceback" not in err


async def test_a_spill_dir_that_cannot_be_made_is_refused_before_serving(tmp_path: Path) -> None:
    # Found at the first spill (Redis away), its settlements were lost: usage never billed.
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "dev_mode: true\nredis_url: redis://127.0.0.1:1/0\n"
        f"metering: {{spill_dir: {tmp_path / 'a-file' / 'spill'}}}\n"
    )
    code, err = await serve_fails(config)
    assert code == 2, err
    assert b"metering.spill_dir" in err
    assert b"is not a directory" in err
    assert b"Traceback" not in err


async def test_every_check_across_fields_that_fails_is_said_at_once(tmp_path: Path) -> None:
    """Each check across fields was its own validator, and pydantic stops at the first that
    raises: a config with three such mistakes took three runs to mend (found 2026-12-07)."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        "redis_url: redis://127.0.0.1:9/0\nmax_body_bytes: 2048\n"
        "models: [{name: m, engines: ['http://127.0.0.1:9']},"
        " {name: m, engines: ['http://127.0.0.1:9']}]\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "LLMAAS_ADMIN_TOKEN": "admin-token-0123456789",
        "LLMAAS_KEY_PEPPER": "short",
    }
    code, err = await serve_fails(config, env=env)
    lines = err.decode().splitlines()
    assert code == 2, lines
    assert lines[0] == "llmaas serve: invalid configuration:"
    assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [
        "environment (LLMAAS_KEY_PEPPER)",
        str(config),
        str(config),
    ]
    assert lines[1].endswith("key_pepper must be at least 16 characters outside dev mode")
    assert "max_body_bytes (2048) leaves less than" in lines[2]
    assert lines[3].endswith("models: duplicate model names ['m']")
    assert b"short" not in err


async def test_config_errors_are_one_line_per_field_and_never_show_a_secret(
    tmp_path: Path,
) -> None:
    """A token or a Redis password in a bad config stays out of the error (pydantic's own
    message quotes the input, and a URL's bad port quotes a piece of its password)."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        "redis_url: redis://:Zm9v/YmFy+cXV4=@127.0.0.1:6379/0\n"
        "key_pepper: pepper-0123456789abcdef\nprot: 9000\n"
    )
    code, err = await serve_fails(
        config, env={"PATH": "/usr/bin:/bin", "LLMAAS_ADMIN_TOKEN": "tok3n"}
    )
    assert code == 2
    lines = err.decode().splitlines()
    assert lines[0] == f"llmaas serve: invalid configuration: {config}:"
    assert sorted(line.split(":", 1)[0].strip() for line in lines[1:]) == ["prot", "redis_url"]
    assert "LLMAAS_REDIS_PASSWORD" in err.decode()
    for secret in (b"Zm9v", b"YmFy", b"tok3n", b"pepper-0123"):
        assert secret not in err
    config.write_text("models: [\n")
    code, err = await serve_fails(config)
    assert code == 2
    assert f'in "{config}", line 2'.encode() in err  # YAML's own error, naming the file
    assert b"Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "trainer"])
async def test_a_config_file_that_is_not_utf8_exits_2_naming_the_file_and_line(
    tmp_path: Path, command: str
) -> None:
    """Found by review 2026-12-06: a latin-1 `é` in a comment ended `llmaas serve` and `llmaas
    trainer` in a UnicodeDecodeError's traceback, exit 1, not the one line naming the file."""
    config = tmp_path / "gw.yaml"
    config.write_bytes(b"key_pepper: pepper-0123456789abcdef\ndev_mode: true\n# caf\xe9\n")
    code, out, err = await run_cli(command, "--config", str(config))
    assert (code, out, err) == (
        2,
        "",
        f"llmaas {command}: invalid configuration: {config}: not UTF-8 text: line 3 (byte 56); "
        "save it as UTF-8\n",
    )


async def test_an_environment_variable_that_is_not_json_exits_2_naming_it(tmp_path: Path) -> None:
    """LLMAAS_MODELS (a list) that is not JSON ended serve with pydantic-settings' traceback."""
    config = tmp_path / "gw.yaml"
    config.write_text("dev_mode: true\n")
    env = {"PATH": "/usr/bin:/bin", "LLMAAS_MODELS": "[{name: m, key: sk-s3cr3t}"}
    code, err = await serve_fails(config, env=env)
    assert code == 2
    assert err.decode() == (
        "llmaas serve: invalid configuration: environment: models: LLMAAS_MODELS is not valid "
        "JSON (an environment variable gives a list or a mapping as JSON: "
        "LLMAAS_AUTH__JWT__ALGORITHMS='[\"RS256\"]')\n"
    )


async def test_a_wrong_value_from_an_environment_variable_names_the_variable(
    tmp_path: Path,
) -> None:
    """LLMAAS_PORT=99999 was said as the file's `port` (which held a good one)."""
    config = tmp_path / "ok.yaml"
    config.write_text("dev_mode: true\nport: 9000\n")
    code, err = await serve_fails(config, env={"PATH": "/usr/bin:/bin", "LLMAAS_PORT": "99999"})
    assert code == 2
    assert err.decode() == (
        "llmaas serve: invalid configuration: environment (LLMAAS_PORT): port: Input should be "
        "less than or equal to 65535\n"
    )


async def test_a_redis_password_given_apart_from_the_url_may_hold_any_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed Redis's key (base64: / + =) as LLMAAS_REDIS_PASSWORD: keys, limits on the
    request path (its own pipelined connection) and metering all authenticate with it."""
    password = "Zm9v/YmFy+cXV4=@#?%"
    async with running_redis(None) as url, running_sim_process(SimConfig(models=["m"])) as sim:
        admin = Redis.from_url(url)
        await admin.config_set("requirepass", password)
        await admin.aclose()
        monkeypatch.setenv("LLMAAS_REDIS_PASSWORD", password)
        config = shared_config(tmp_path / "gw.yaml", redis_url=url, model="m", sim=sim)
        async with gateway_process(config) as served, aiohttp.ClientSession() as http:
            status, made = await admin_request(
                http, served.url, "POST", "/keys", {"tenant": "t", "rpm": 100, "tpm": 10**6}
            )
            assert status == 201, made
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            auth = {"authorization": f"Bearer {made['key']}"}
            url_chat = f"{served.url}/v1/chat/completions"
            async with http.post(url_chat, json=body, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["x-ratelimit-remaining-requests"] == "99"
            for _ in range(50):  # the usage is settled in the background, with the password
                status, usage = await admin_request(http, served.url, "GET", "/usage?tenant=t")
                if status == 200 and usage.get("data"):
                    break
                await asyncio.sleep(0.1)
            assert status == 200, usage
            assert usage["data"], usage
        authed = Redis.from_url(url, password=password)
        await authed.config_set("requirepass", "")  # as running_redis found it
        await authed.aclose()


async def test_the_redis_password_is_used_instead_of_the_urls_with_the_urls_user(
    tmp_path: Path,
) -> None:
    """Found by review 2026-12-07: a URL holding a stale password beat LLMAAS_REDIS_PASSWORD
    (redis-py lets a URL's options win over its keywords): every connection failed, WRONGPASS.
    Keys, the request path's pipelined connection and metering all use the variable's."""
    password = secrets.token_hex(12)
    async with running_redis(None) as url, running_sim_process(SimConfig(models=["m"])) as sim:
        admin = Redis.from_url(url)
        await admin.acl_setuser(
            "gw",
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        await admin.config_set("requirepass", secrets.token_hex(12))  # no way in without one
        await admin.aclose()
        stale = url.replace("redis://", "redis://gw:stale-password@", 1)
        config = shared_config(tmp_path / "gw.yaml", redis_url=stale, model="m", sim=sim)
        env = {"LLMAAS_REDIS_PASSWORD": password}
        async with gateway_process(config, env=env) as served, aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/readyz", headers=OPS) as resp:
                assert (await resp.json())["redis"] == "ok"
            status, made = await admin_request(
                http, served.url, "POST", "/keys", {"tenant": "t", "rpm": 100, "tpm": 10**6}
            )
            assert status == 201, made
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            auth = {"authorization": f"Bearer {made['key']}"}
            async with http.post(f"{served.url}/v1/chat/completions", json=body, headers=auth) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-ratelimit-remaining-requests"] == "99"
        as_user = Redis.from_url(url, username="gw", password=password)
        assert await as_user.acl_whoami() == "gw"  # (the user whose password it is)
        await as_user.config_set("requirepass", "")  # as running_redis found it
        await as_user.aclose()


async def test_a_redis_asking_for_a_password_none_gives_is_logged_naming_the_settings(
    tmp_path: Path,
) -> None:
    """Found by review 2026-12-07: redis-py 8's greeting (RESP3 HELLO) is answered "HELLO must
    be called with the client already authenticated, ...", which names no setting; only the
    request path's connection said which ones hold a password."""
    log = tmp_path / "gw.log"
    password = secrets.token_hex(12)
    async with running_redis(None) as url, running_sim_process(SimConfig(models=["m"])) as sim:
        admin = Redis.from_url(url)
        await admin.config_set("requirepass", password)
        await admin.aclose()
        config = shared_config(tmp_path / "gw.yaml", redis_url=url, model="m", sim=sim)
        async with gateway_process(config, log=log) as served, aiohttp.ClientSession() as http:
            status, refused = await admin_request(http, served.url, "GET", "/keys")
            assert status == 503, refused
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        errors = {line["msg"]: line["error"] for line in lines if "error" in line}
        assert "store (Redis) unavailable" in errors, errors
        for error in errors.values():  # the store's, the feeds', the ledger's alike
            assert error.startswith(f"AuthenticationError: {NO_PASSWORD}: "), error
        authed = Redis.from_url(url, password=password)
        await authed.config_set("requirepass", "")  # as running_redis found it
        await authed.aclose()


@pytest.mark.parametrize("command", ["serve", "trainer"])
@pytest.mark.parametrize("database", ["/db3", "/x", "/3?db=three"])
async def test_a_redis_url_whose_database_is_not_a_number_is_refused(
    tmp_path: Path, command: str, database: str
) -> None:
    """Found by review 2026-12-07: redis-py reads a path that is not a number (/db3) as no
    database at all, and the gateway used database 0: maybe another application's data."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"redis_url: redis://gw:Zm9v-s3cret@127.0.0.1:6379{database}\n"
        "key_pepper: pepper-0123456789abcdef\ndev_mode: true\n"
        "fine_tuning: {base_models: {m: /nowhere}}\n"
    )
    code, out, err = await run_cli(command, "--config", str(config))
    assert (code, out) == (2, ""), err
    assert f"llmaas {command}: invalid configuration: {config}:" in err
    assert "redis_url: its database is not a number" in err
    assert "Zm9v" not in err
    assert "s3cret" not in err


async def test_refuses_to_start_without_secrets_outside_dev_mode(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("models: []\n")
    code, err = await serve_fails(config, env={"PATH": "/usr/bin:/bin"})
    assert code == 2
    for name in (b"LLMAAS_ADMIN_TOKEN", b"LLMAAS_KEY_PEPPER", b"LLMAAS_REDIS_URL"):
        assert name in err


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_port_in_use_ends_serve_at_once_with_redis_feeds_starting(
    tmp_path: Path, workers: str
) -> None:
    """The bind fails a moment after the app started, its Redis feeds still subscribing: a
    cancel that lands in redis-py's connect is lost, and the process used to wait for ever
    (a SIGTERM too). It exits, saying why, in a JSON line (with --workers 2 it was plain
    text: the supervisor bound the socket before it set its logging up)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async with running_redis(None) as url:
            config = shared_config(tmp_path / "gw.yaml", redis_url=url, model="m", sim="http://a")
            proc = await asyncio.create_subprocess_exec(
                *serve_command(config, "--port", str(port), "--workers", workers),
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        taken.close()
    assert proc.returncode not in (0, None)
    assert b"address already in use" in err.lower()
    assert b"Traceback" not in err
    (said,) = [line for line in err.splitlines() if b"address already in use" in line.lower()]
    assert json.loads(said)["level"] == "error", said


async def serve_with_jwt(tmp_path: Path, **jwt: object) -> tuple[int | None, bytes]:
    """`llmaas serve` of a config whose auth.jwt has an issuer, an audience and `jwt`, which
    should refuse to start: its exit code and stderr."""
    fields = "".join(f"    {name}: {value}\n" for name, value in jwt.items())
    config = tmp_path / "gw.yaml"
    config.write_text(f"dev_mode: true\nauth:\n  jwt:\n    issuer: i\n    audience: a\n{fields}")
    return await serve_fails(config)


async def test_unusable_jwt_key_files_are_config_errors_not_a_startup_traceback(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private.pem"  # a private key where the public one goes
    private.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    jwks = tmp_path / "jwks.json"
    jwks.write_text("{nope")
    code, err = await serve_with_jwt(tmp_path, public_key_file=private, jwks_file=jwks)
    assert code == 2
    lines = err.decode().splitlines()
    assert lines == [
        "llmaas serve: invalid configuration:",
        f"  auth.jwt.public_key_file ({private}): not a PEM public key (RSA, EC or EdDSA)",
        f"  auth.jwt.jwks_file ({jwks}): not JSON (line 1, column 2: Expecting property name "
        "enclosed in double quotes)",
    ]


async def test_jwt_keys_that_verify_none_of_the_algorithms_are_a_config_error(
    tmp_path: Path,
) -> None:
    """An RSA key with only ES256 listed: every token would have been a 401 while the gateway
    ran as if set up (the README says such a setup does not start)."""
    public = tmp_path / "rsa.pem"
    public.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, err = await serve_with_jwt(tmp_path, public_key_file=public, algorithms="[ES256]")
    assert code == 2
    assert err.decode().splitlines() == [
        "llmaas serve: invalid configuration: auth.jwt.algorithms (ES256): no key of "
        "public_key_file or jwks_file verifies any of them (keys: RSA); every token would be "
        "refused",
    ]
