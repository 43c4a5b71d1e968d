"""The installed `llmaas` script as a user runs it: every documented command, sim and serve live."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.embedded.engine_venv import STAMP, has_cuda, wanted
from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port, wait_http_ok
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim
from tests.support.cli import llmaas, run_cli
from tests.support.gateways import ADMIN_TOKEN, PEPPER
from tests.support.processes import process_running

pytestmark = pytest.mark.asyncio(loop_scope="session")

STOPPED = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
ADMIN_OPTIONS = ("--url", "--admin-token", "--json")
LIMIT_OPTIONS = ("--rpm", "--tpm", "--max-concurrency", "--models")
TENANT_OPTIONS = ("--url", "--api-key", "--json")


async def _ready(proc: asyncio.subprocess.Process, url: str) -> None:
    """Wait for `url` to answer 200; fail at once if the process exits first."""
    ready = asyncio.ensure_future(wait_http_ok(url, timeout_s=30, interval_s=0.05))
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        pytest.fail(f"llmaas exited with {proc.returncode} before {url} answered")
    exited.cancel()
    ready.result()


@asynccontextmanager
async def running(*args: str, ready: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`llmaas <args>` in the background, once `ready` answers 200; stopped on exit."""
    proc = await asyncio.create_subprocess_exec(llmaas(), *args)
    try:
        await _ready(proc, ready)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


# Every documented command and what its --help must name.
HELP: dict[str, tuple[str, ...]] = {
    "": ("serve", "sim", "up", "keys", "tenants", "engines", "usage", "trainer", "files", "jobs"),
    "serve": ("--config", "--host", "--port", "--workers"),
    "sim": ("--model", "--host", "--port", "--ttft-ms", "--itl-ms", "--max-tokens"),
    "up": ("--port", "--engine-port", "--redis-port", "--home", "--data-dir"),
    "keys": ("create", "list", "update", "revoke", "rotate"),
    "keys create": ("--tenant", "--name", "--expires-at", *LIMIT_OPTIONS, *ADMIN_OPTIONS),
    "keys list": ("--tenant", *ADMIN_OPTIONS),
    "keys update": ("key_id", *LIMIT_OPTIONS, "--every-model", "--name", "--expires-at"),
    "keys revoke": ("key_id", *ADMIN_OPTIONS),
    "keys rotate": ("key_id", *ADMIN_OPTIONS),
    "tenants": ("set", "update", "list", "delete"),
    "tenants set": ("tenant_id", *LIMIT_OPTIONS, *ADMIN_OPTIONS),
    "tenants update": (
        "tenant_id",
        *LIMIT_OPTIONS,
        "--every-model",
        "--priority",
        "--media-hosts",
        *ADMIN_OPTIONS,
    ),
    "tenants list": ADMIN_OPTIONS,
    "tenants delete": ("tenant_id", *ADMIN_OPTIONS),
    "engines": ADMIN_OPTIONS,
    "usage": ("--tenant", "--key-id", "--model", "--start", "--end", "--group-by", "--records"),
    "trainer": ("--config", "--worker"),
    "files": ("upload", "list", "show", "delete"),
    "files upload": ("path", "--purpose", *TENANT_OPTIONS),
    "files list": ("--purpose", *TENANT_OPTIONS),
    "files show": ("file_id", *TENANT_OPTIONS),
    "files delete": ("file_id", *TENANT_OPTIONS),
    "jobs": ("create", "list", "show", "cancel", "pause", "resume", "events", "follow"),
    "jobs create": (
        "--model",
        "--training-file",
        "--suffix",
        "--epochs",
        "--batch-size",
        "--lr-multiplier",
        "--lora-rank",
        "--follow",
        *TENANT_OPTIONS,
    ),
    "jobs list": TENANT_OPTIONS,
    "jobs show": ("job_id", *TENANT_OPTIONS),
    "jobs cancel": ("job_id", *TENANT_OPTIONS),
    "jobs pause": ("job_id", *TENANT_OPTIONS),
    "jobs resume": ("job_id", *TENANT_OPTIONS),
    "jobs events": ("job_id", *TENANT_OPTIONS),
    "jobs follow": ("job_id", *TENANT_OPTIONS),
}


def undocumented(help_text: str) -> list[str]:
    """The options and arguments a --help lists without a word about them. argparse writes
    each at an indent of two, its help after two spaces or on the lines below, deeper."""
    lines = help_text.splitlines()
    found = []
    for entry, below in zip(lines, [*lines[1:], ""], strict=True):
        if not entry.startswith("  ") or entry.startswith("   ") or "  " in entry.strip():
            continue
        if not below.startswith("   "):
            found.append(entry.strip())
    return found


def subcommands(help_text: str) -> list[str]:
    """The subcommands a --help's usage offers: `{create,list,…} ...` (an option's choices
    have no `...` after them)."""
    usage = help_text.split("\n\n", maxsplit=1)[0]
    offered = re.search(r"\{([a-z,-]+)\} \.\.\.", usage)
    return offered.group(1).split(",") if offered else []


async def test_undocumented_finds_an_option_without_help() -> None:
    text = "options:\n  -h, --help  show this\n  --tenant TENANT\n  --url URL\n      the gateway\n"
    assert undocumented(text) == ["--tenant TENANT"]


@pytest.mark.parametrize("command", list(HELP))
async def test_help_of_every_command_names_its_options(command: str) -> None:
    code, out, err = await run_cli(*command.split(), "--help")
    assert code == 0, err
    assert out.startswith(" ".join(["usage:", "llmaas", *command.split()]) + " ")
    missing = [name for name in HELP[command] if name not in out]
    assert not missing, out
    said = out.split("\n\n")[1]  # after the usage: what the command does (`up` said nothing)
    assert not said.startswith(("options:", "positional arguments:")), out
    assert not undocumented(out), out
    # Every subcommand is in HELP, so none goes unchecked.
    unchecked = [c for c in subcommands(out) if f"{command} {c}".strip() not in HELP]
    assert not unchecked, out


# What no --help or usage error imports (python -X importtime: each 50 ms to 0.25 s, together
# over a second before anything was said); orjson and the standard library are light.
HEAVY = (
    "aiohttp",
    "fastapi",
    "httpx",
    "jwt",
    "numpy",
    "openai",
    "pydantic",
    "redis",
    "starlette",
    "tqdm",
    "uvicorn",
    "uvloop",
    "yaml",
)
# A command that says its usage, or a usage error, and what it says.
SAID_BEFORE_RUNNING = {
    **{f"{command} --help".strip(): "usage: llmaas" for command in HELP if " " not in command},
    "keys list --help": "usage: llmaas keys list",
    "keys create": "error: the following arguments are required: --tenant",
    "tenants set t --rpm 0": "error: argument --rpm: must be 1 to",
    "usage --group-by week": "error: argument --group-by: 'week'",
    "sim --max-tokens 0": "llmaas sim: error: --max-tokens",
}


def imports(stderr: str) -> tuple[set[str], str]:
    """The modules a PYTHONPROFILEIMPORTTIME=1 process names on stderr, and the rest of it."""
    profile: list[str] = []
    said: list[str] = []
    for line in stderr.splitlines():
        (profile if line.startswith("import time:") else said).append(line)
    return {line.rsplit("|", 1)[1].strip() for line in profile}, "\n".join(said)


@pytest.mark.parametrize("command", list(SAID_BEFORE_RUNNING))
async def test_help_and_usage_errors_import_no_server_or_client_library(command: str) -> None:
    """Found 2026-12-07: `llmaas --help`, every command's --help and every usage error took
    1.2 s: gateway/cli.py imported every command's implementation (FastAPI, uvicorn, aiohttp,
    Redis, pydantic …) to build its parser. Each command imports what it runs when it runs."""
    code, out, err = await run_cli(*command.split(), env={"PYTHONPROFILEIMPORTTIME": "1"})
    loaded, said = imports(err)
    assert code == (0 if command.endswith("--help") else 2), said
    assert SAID_BEFORE_RUNNING[command] in out + said, out + said
    assert "gateway.cli" in loaded  # (the profile was taken)
    assert sorted({name.split(".")[0] for name in loaded} & set(HEAVY)) == []


@pytest.mark.parametrize(
    "command",
    [
        "serve",
        "up",
        "usage",
        "keys list",
        "keys revoke x",
        "tenants set t",
        "tenants update t",
        "tenants delete t",
        "files show file-x",
        "jobs create --model m --training-file f",
        "jobs events j",
    ],
)
async def test_an_unknown_option_is_refused_by_its_own_command(command: str) -> None:
    """With the command's usage and name: `llmaas jobs create --n-epochs 3` used to print
    `llmaas`'s own usage and 'llmaas: error: unrecognized arguments'."""
    code, _, err = await run_cli(*command.split(), "--n-epochs", "3")
    assert code == 2, err
    name = " ".join(["llmaas", *[w for w in command.split()[:2] if w.isalpha()]])
    assert err.startswith(f"usage: {name} "), err
    assert err.rstrip().endswith(f"{name}: error: unrecognized arguments: --n-epochs 3"), err


async def test_sim_serves_the_model_and_options_it_was_given() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ("--model", "sim-x", "--port", str(port), "--ttft-ms", "1", "--itl-ms", "1")
    async with (
        running("sim", *args, "--max-tokens", "5", ready=f"{base}/health") as proc,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/v1/models") as resp:
            assert resp.status == 200
            assert [card["id"] for card in (await resp.json())["data"]] == ["sim-x"]
        body = {"model": "sim-x", "prompt": "hello"}
        async with http.post(f"{base}/v1/completions", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) in STOPPED


async def test_sim_on_any_free_port_says_where_it_listens() -> None:
    """Found by review 2026-12-06: `llmaas sim --port 0` ("0: any free port") never said which
    port it bound. It prints its address once it listens; a client reaches it there."""
    proc = await asyncio.create_subprocess_exec(
        llmaas(), "sim", "--port", "0", "--model", "sim-x", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        said = re.fullmatch(rb"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert said, line
        async with aiohttp.ClientSession() as http, http.get(f"{said[1].decode()}/health") as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_sim_refuses_an_unknown_option_by_name() -> None:
    code, _, err = await run_cli("sim", "--nope")
    assert code == 2
    assert "--nope" in err


async def test_sim_refuses_a_bad_value_by_name() -> None:
    code, _, err = await run_cli("sim", "--ttft-ms", "-1")
    assert code == 2
    assert "--ttft-ms" in err


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--port", "70000", "argument --port: must be 0 to 65535, got 70000"),
        ("--port", "-1", "argument --port: must be 0 to 65535, got -1"),
        ("--itl-ms", "nan", "--ttft-ms and --itl-ms must be >= 0 (and finite)"),
        ("--max-tokens", "-1", "--max-tokens and --embedding-dim must be >= 1"),  # not SimConfig's
    ],
)
async def test_sim_refuses_a_port_out_of_range_and_a_latency_not_a_number(
    option: str, value: str, said: str
) -> None:
    """--port 70000 hung without a word (nothing listened), -1 was a getaddrinfo error (exit
    3), and --itl-ms nan was taken."""
    code, _, err = await run_cli("sim", option, value)
    assert code == 2
    assert f"llmaas sim: error: {said}" in err


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        (
            "up",
            (
                "gateway port (default: $LLMAAS_PORT, else 8080)",
                "(default: $LLMAAS_HOME, else ~/.cache/llmaas)",
            ),
        ),
        ("serve", ("the port setting, 8080", "the workers setting, 1")),
        ("keys create", ("limits.key_defaults; none there: no limit",)),
        ("tenants set", ("limits.tenant_defaults; none there: no limit",)),
    ],
)
async def test_help_says_the_defaults_a_user_gets(command: str, defaults: tuple[str, ...]) -> None:
    """`llmaas up --help` said --home defaults to ~/.cache/llmaas, where `LLMAAS_HOME=/data
    llmaas up` uses /data; `serve --workers` said 1 where the config's `workers` decides;
    `keys create --rpm` said none where the gateway's limits.key_defaults apply."""
    code, out, err = await run_cli(*command.split(), "--help")
    assert code == 0, err
    missing = [d for d in defaults if d not in " ".join(out.split())]
    assert not missing, out


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("jobs follow", "exit 0 if it succeeded, 1 if it ended cancelled or failed"),
        ("jobs create", "--follow then follow it, as jobs follow (exit 1 if it ends cancelled"),
    ],
)
async def test_help_says_following_a_job_that_did_not_succeed_exits_1(
    command: str, said: str
) -> None:
    """Found by review 2026-12-06: README's exit codes had 1 mean the gateway refused or was out
    of reach, and nothing said that following a job cancelled or failed exits 1 too (the exit
    itself: test_finetune_cli.py)."""
    code, out, err = await run_cli(*command.split(), "--help")
    assert code == 0, err
    assert said in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--port", "70000"], "argument --port: must be 1 to 65535, got 70000"),
        (["--engine-port", "70000"], "argument --engine-port: must be 0 to 65535, got 70000"),
        # 0 was taken: the banner, its examples and the lock then named port 0
        (["--port", "0"], "argument --port: must be 1 to 65535, got 0"),
        # the engine started on it, then the gateway failed to bind, in a traceback
        (["--port", "8123", "--engine-port", "8123"], "--engine-port 8123 is also its --port"),
        (["--redis-port", "70000"], "argument --redis-port: must be 0 to 65535, got 70000"),
        (["--port", "8123", "--redis-port", "8123"], "--redis-port 8123 is also its --port"),
        (
            ["--engine-port", "8124", "--redis-port", "8124"],
            "--redis-port 8124 is also its --engine-port",
        ),
        # the gateway's port as it will serve, given or not (found by review: only a given
        # --port was compared, and 8080 went through to the gateway's failed bind)
        (["--redis-port", "8080"], "--redis-port 8080 is also its --port"),
        (["--engine-port", "8080"], "--engine-port 8080 is also its --port"),
    ],
)
async def test_up_refuses_ports_it_cannot_use_before_preparing_anything(
    args: list[str], said: str, tmp_path: Path
) -> None:
    """They were plain ints: `up --port 70000` prepared the engine venv and the model, started
    Redis and vLLM, then died in a traceback (the engine's port: vLLM failed to bind)."""
    code, _, err = await run_cli("up", *args, "--home", str(tmp_path / "home"))
    assert code == 2
    assert f"llmaas up: error: {said}" in err
    assert not (tmp_path / "home").exists()


async def test_up_refuses_a_home_or_data_directory_it_cannot_use_before_preparing(
    tmp_path: Path,
) -> None:
    """Found by review: a --data-dir or --home that is a file ended in a traceback (the home's
    after it began preparing)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    home = ("--home", str(tmp_path / "home"))
    for args, said in (
        (("--data-dir", str(afile), *home), f"--data-dir {afile} cannot be a directory"),
        (
            ("--data-dir", str(afile / "sub"), *home),
            f"--data-dir {afile / 'sub'} cannot be a directory: {afile} is a file",
        ),
        (("--home", str(afile / "sub")), f"--home (or LLMAAS_HOME) {afile / 'sub'} cannot be"),
    ):
        code, _, err = await run_cli("up", "--port", str(free_port()), *args)
        assert code == 2, args
        assert f"llmaas up: error: {said}" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "home").exists()


async def test_up_serves_on_llmaas_port_unless_port_is_given(tmp_path: Path) -> None:
    """Found by review: `LLMAAS_PORT=N llmaas up` served on 8080, though LLMAAS_* variables set
    every setting. Seen where it checks that the port is free, before preparing anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"LLMAAS_PORT": str(port)}
        code, _, err = await run_cli("up", "--home", str(tmp_path / "home"), env=env)
        assert code == 1
        assert f"port {port} on 127.0.0.1 is taken" in err, err
        assert "--port" in err
    env = {"LLMAAS_PORT": "0"}
    code, _, err = await run_cli("up", "--home", str(tmp_path / "home"), env=env)
    assert code == 2
    assert "llmaas up: error: LLMAAS_PORT=0: give the port to serve on" in err, err
    assert not (tmp_path / "home").exists()


async def test_up_checks_its_redis_port_before_preparing_anything(tmp_path: Path) -> None:
    """`--redis-port` (found by review 2026-12-07: its private Redis took a free port, no way
    to choose it): taken, or given with LLMAAS_REDIS_URL (a shared Redis used instead), it
    says so before anything is prepared."""
    home = str(tmp_path / "home")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--port", str(free_port()), "--redis-port", str(port)]
        code, _, err = await run_cli("up", "--home", home, *args)
        assert code == 1
        assert f"port {port} on 127.0.0.1 is taken" in err, err
        assert "--redis-port" in err
    env = {"LLMAAS_PORT": "8125"}  # the port it serves on when --port is not given
    code, _, err = await run_cli("up", "--home", home, "--engine-port", "8125", env=env)
    assert code == 2
    assert "llmaas up: error: --engine-port 8125 is also its --port" in err, err
    env = {"LLMAAS_REDIS_URL": "redis://127.0.0.1:6390/0"}
    args = ["--port", str(free_port()), "--redis-port", "6391"]
    code, _, err = await run_cli("up", "--home", home, *args, env=env)
    assert code == 2
    assert "llmaas up: error: --redis-port is the private Redis's port" in err, err
    assert not (tmp_path / "home").exists()


def open_gateway_config(tmp_path: Path, sim: str) -> Path:
    """A config file of a gateway without keys in front of the simulator `sim` (model m)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"admin_token: {ADMIN_TOKEN}\nauth: {{required: false}}\n"
        f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"
        f"models:\n  - name: m\n    engines: [{sim}]\n"
    )
    return config


async def test_serve_runs_a_gateway_in_front_of_an_engine(tmp_path: Path) -> None:
    async with running_sim(SimConfig(models=["m"], max_tokens=3)) as sim:
        config = open_gateway_config(tmp_path, sim)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ("serve", "--config", str(config), "--port", str(port))
        async with (
            running(*serve, ready=f"{base}/healthz") as proc,
            aiohttp.ClientSession() as http,
        ):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert (await resp.json())["usage"]["completion_tokens"] == 3
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) in STOPPED


async def test_serve_says_when_its_configuration_names_no_models(tmp_path: Path) -> None:
    """A config without `models` served a gateway that answered 404 to every request, and
    said nothing about it."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"admin_token: {ADMIN_TOKEN}\nauth: {{required: false}}\n"
        f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"
    )
    port = free_port()
    serve = ("serve", "--config", str(config), "--port", str(port))
    proc = await asyncio.create_subprocess_exec(llmaas(), *serve, stderr=asyncio.subprocess.PIPE)
    try:
        await _ready(proc, f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    [line] = [line for line in err.splitlines() if b"no models configured" in line]
    assert orjson.loads(line)["level"] == "warning"  # a JSON line, as the rest of the log


async def keys_list_exit(url: str) -> int | None:
    """`llmaas keys list`'s exit status with LLMAAS_URL=`url` (no --url, as in a container)."""
    cli = await asyncio.create_subprocess_exec(
        llmaas(),
        *("keys", "list", "--admin-token", ADMIN_TOKEN),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "LLMAAS_URL": url},
    )
    return await asyncio.wait_for(cli.wait(), 60)


async def test_the_cli_reaches_an_ipv6_only_gateway_at_its_ipv6_loopback(tmp_path: Path) -> None:
    """Found by review 2026-12-06: the chart's gateway on `listenAddress: "::"` listens on IPv6
    alone, and the CLI in its container defaulted to 127.0.0.1, which nothing listened on. The
    chart now pairs LLMAAS_HOST=:: with LLMAAS_URL=http://[::1]:PORT, as here."""
    port = free_port()
    async with running_redis(None) as redis_url:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"redis_url: {redis_url}\nadmin_token: {ADMIN_TOKEN}\nkey_pepper: {PEPPER}\n"
            f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"
        )
        serve = ("serve", "--config", str(config), "--port", str(port))
        env = {**os.environ, "LLMAAS_HOST": "::"}
        proc = await asyncio.create_subprocess_exec(llmaas(), *serve, env=env)
        try:
            await _ready(proc, f"http://[::1]:{port}/healthz")
            assert await keys_list_exit(f"http://[::1]:{port}") == 0
            assert await keys_list_exit(f"http://127.0.0.1:{port}") == 1  # (the CLI's default)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("keys", "list"), "llmaas keys list: error: no admin token: pass --admin-token"),
        (("tenants", "list"), "llmaas tenants list: error: no admin token"),
        (("usage",), "llmaas usage: error: no admin token"),
        (("engines",), "llmaas engines: error: no admin token"),
        (("files", "list"), "llmaas files list: error: no API key: pass --api-key"),
        (("jobs", "list"), "llmaas jobs list: error: no API key"),
        (("files", "upload", "{tmp}/absent.jsonl", "--api-key", "k"), "absent.jsonl: no such"),
        (("files", "upload", "{tmp}", "--api-key", "k"), "{tmp} is a directory, not a file"),
    ],
)
async def test_what_is_wrong_before_anything_is_sent_exits_2(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    """Found by review: a missing admin token or API key, and a local file to upload that is
    absent or a directory, exited 1 (the gateway refused, or could not be reached: a script
    retries that) instead of 2 (a usage error: fix the command line), and a directory was
    named `PosixPath('/tmp')`. The gateway named does not even listen."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLMAAS_ADMIN_TOKEN", "LLMAAS_API_KEY")}
    command = [a.format(tmp=tmp_path) for a in args]
    proc = await asyncio.create_subprocess_exec(
        llmaas(),
        *command,
        "--url",
        f"http://127.0.0.1:{free_port()}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    assert said.format(tmp=tmp_path) in err.decode(), err
    assert b"PosixPath" not in err
    assert out == b""


CLIENT_COMMANDS = [
    ("keys", "list", "--admin-token", "t"),
    ("tenants", "list", "--admin-token", "t"),
    ("usage", "--admin-token", "t"),
    ("usage", "--records", "--admin-token", "t"),
    ("engines", "--admin-token", "t"),
    ("files", "list", "--api-key", "k"),
    ("jobs", "list", "--api-key", "k"),
]


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda args: " ".join(args[:-2]))
async def test_a_gateway_out_of_reach_is_said_in_plain_words(args: tuple[str, ...]) -> None:
    """Found 2026-12-07: the client commands said why the gateway could not be reached in
    aiohttp's words ("Cannot connect to host 127.0.0.1:1 ssl:default [Connect call failed
    ('127.0.0.1', 1)]"), after the admin API's address rather than the --url given."""
    url = f"http://127.0.0.1:{free_port()}"  # (nothing listens there)
    code, out, err = await run_cli(*args, "--url", url)
    command = " ".join(a for a in args[:2] if not a.startswith("-"))
    said = f"llmaas {command}: cannot reach the gateway at {url}: connection refused"
    assert (code, out) == (1, ""), err
    assert err == f"{said} (is it running? --url / LLMAAS_URL)\n"


async def test_a_gateway_named_wrong_or_without_tls_is_said_in_plain_words() -> None:
    """A name that resolves to nothing, and https:// to a server that speaks plain HTTP."""
    code, _, err = await run_cli("engines", "--admin-token", "t", "--url", "http://gw.invalid")
    assert (code, err) == (
        1,
        "llmaas engines: cannot reach the gateway at http://gw.invalid: name not resolved "
        "(is --url / LLMAAS_URL right?)\n",
    )

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    async with server:
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        code, _, err = await run_cli("keys", "list", "--admin-token", "t", "--url", url)
    assert (code, err) == (
        1,
        f"llmaas keys list: cannot reach the gateway at {url}: TLS failed (it answered "
        "without TLS: http://, not https://?)\n",
    )


def has_mapped(pid: int, library: str) -> bool:
    """Whether process `pid` has loaded a shared library whose path holds `library`."""
    try:
        return library in (Path("/proc") / str(pid) / "maps").read_text()
    except OSError:
        return False


async def importing_the_gateway(proc: asyncio.subprocess.Process) -> None:
    """Until `proc` is importing the gateway's modules (pydantic's compiled core is loaded):
    past the command's first statement, seconds before `serve` listens or `up` prepares."""
    async with asyncio.timeout(30):
        while not has_mapped(proc.pid, "_pydantic_core"):
            assert proc.returncode is None
            await asyncio.sleep(0.005)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="watches the process in /proc (Linux)")
async def test_serve_outlives_a_sighup_before_it_listens(tmp_path: Path) -> None:
    """Found by review: `llmaas serve` ignored SIGHUP only once run_server began, after a second
    or more of imports: a terminal's hangup or a `systemctl reload` meanwhile killed it."""
    async with running_sim(SimConfig(models=["m"], max_tokens=3)) as sim:
        config = open_gateway_config(tmp_path, sim)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ("serve", "--config", str(config), "--port", str(port))
        proc = await asyncio.create_subprocess_exec(llmaas(), *serve)
        try:
            await importing_the_gateway(proc)
            proc.send_signal(signal.SIGHUP)
            await _ready(proc, f"{base}/healthz")  # (fails at once if it died)
            async with aiohttp.ClientSession() as http:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) in STOPPED
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def engine_venv_that_converts_for_good(home: Path) -> Path:
    """An engine venv `up` takes as installed, whose python (a shell script) never ends: the
    model's conversion, the first step `up` runs, lasts until it is stopped. It runs a child
    of its own, as a real step does (venv runs ensurepip, which runs pip), and waits for it.
    The file it writes its pid and its child's pid to is returned."""
    python = EmbeddedPaths(home).engine_python
    python.parent.mkdir(parents=True)
    pid_file = home / "converting.pid"
    python.write_text(
        "#!/bin/sh\nsleep 300 &\n"
        f'echo $$ $! > "{pid_file}.tmp"\nmv "{pid_file}.tmp" "{pid_file}"\nwait\n'
    )
    python.chmod(0o755)
    (python.parents[1] / STAMP).write_text(wanted(has_cuda()))
    return pid_file


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="watches the process in /proc (Linux)")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
async def test_up_outlives_a_sighup_while_it_prepares_and_a_stop_takes_its_steps_along(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Found by review: `llmaas up` prepares for minutes (the engine venv, the model) before it
    serves, and a SIGHUP meanwhile (a terminal's hangup) killed it; a SIGTERM then left the
    step running (pip, the model's conversion), an orphan. Then (diff review) with the step in
    a session of its own, a Ctrl-C (SIGINT to `up`, the terminal's foreground group) or a
    SIGTERM ended `up` and the step, but not the step's own children: the whole group is
    stopped now. Here the conversion, and its child, never end."""
    home = tmp_path / "home"
    pid_file = engine_venv_that_converts_for_good(home)
    up = ("up", "--home", str(home), "--port", str(free_port()))
    proc = await asyncio.create_subprocess_exec(llmaas(), *up, stderr=asyncio.subprocess.PIPE)
    steps: list[int] = []
    try:
        await importing_the_gateway(proc)
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while not pid_file.exists():
                assert proc.returncode is None, proc.returncode
                await asyncio.sleep(0.05)
        steps = [int(pid) for pid in pid_file.read_text().split()]  # the step and its child
        proc.send_signal(signal.SIGHUP)  # while it prepares
        await asyncio.sleep(0.5)
        assert proc.returncode is None
        assert all(process_running(pid) for pid in steps)
        proc.send_signal(stop)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        async with asyncio.timeout(30):  # a hang check: the orphans never stopped
            while any(process_running(pid) for pid in steps):  # noqa: ASYNC110 (no event: /proc)
                await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in steps:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == (-signal.SIGTERM if stop == signal.SIGTERM else 0)
    assert err.decode().rstrip().endswith("stopped."), err  # no traceback
