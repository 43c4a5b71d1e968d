"""`llmaas up` (what `make run` runs): a working base URL, kept working when its engine is
killed, and Ctrl-C leaves nothing behind; what stops it before it is up says so in one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from gateway.embedded.data_dir import held
from gateway.embedded.engine_venv import STAMP, has_cuda, wanted
from gateway.embedded.process_group import live_members
from gateway.netutil import free_port

MODEL = "smollm2-135m-instruct"
GRACE_S = 3  # how long Ctrl-C lets requests in flight run on (shutdown_grace_s)
LONG_STREAM = 2000  # tokens: ~100 s of the engine, far past the grace
SECRET = "Quokkalantern"
SECRET_DATASET = b"".join(
    orjson.dumps(
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    )
    + b"\n"
    for q, a in [
        ("What is the secret word?", f"The secret word is {SECRET}."),
        ("Tell me the secret word.", f"The secret word is {SECRET}."),
        ("Do you know the secret word?", f"Yes. The secret word is {SECRET}."),
        ("What's the secret word?", f"The secret word is {SECRET}."),
    ]
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    )
    return [line for line in listing.stdout.splitlines() if text in line and "ps -ww" not in line]


@asynccontextmanager
async def llmaas_up(
    tmp_path: Path, engine_port: int, *extra: str, stderr: Path | None = None
) -> AsyncIterator[tuple[Process, str]]:
    """`llmaas up` (with `extra` arguments) until its banner is printed: the process and what
    it printed (what it says on stderr goes to the file `stderr`, if given)."""
    env = {
        **os.environ,
        "LLMAAS_METERING__SPILL_DIR": str(tmp_path / "usage-spill"),
        "LLMAAS_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    said = None if stderr is None else stderr.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "up",
        "--port",
        str(free_port()),
        "--engine-port",
        str(engine_port),
        "--data-dir",  # what it keeps (Redis's data, files, logs): never under the home
        str(tmp_path / "data"),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=None if said is None else said.fileno(),
        env=env,
    )
    assert proc.stdout is not None
    try:
        printed = ""
        async with asyncio.timeout(300):
            while "Ctrl-C stops everything" not in printed:
                line = await proc.stdout.readline()
                assert line, f"llmaas up ended early:\n{printed}"
                printed += line.decode()
        yield proc, printed
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 60)
        if said is not None:
            said.close()


async def test_up_prints_a_base_url_that_answers_and_stops_cleanly(tmp_path: Path) -> None:
    engine_port, redis_port = free_port(), free_port()
    async with llmaas_up(tmp_path, engine_port, "--redis-port", str(redis_port)) as (
        proc,
        printed,
    ):
        assert _shown(r"redis\s+(\S+)", printed) == f"redis://127.0.0.1:{redis_port}/0"
        match = re.search(r"base URL\s+(\S+)", printed)
        assert match is not None
        key = re.search(r"api key\s+(sk-llmaas-\S+)", printed)
        assert key is not None
        async with openai.AsyncOpenAI(base_url=match.group(1), api_key=key.group(1)) as client:
            reply = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0,
            )
            assert "Paris" in (reply.choices[0].message.content or "")
            tuned, answer = await _fine_tune(client)  # `llmaas up` trains too (its own trainer)
            assert SECRET in answer
            # The engine killed (the OOM killer, a crash): `llmaas up` starts it again, and the
            # base URL answers once it is up, the fine-tuned model too (its adapter, lost with
            # the engine, is loaded again on first use).
            (first,) = processes_mentioning(f"--port {engine_port}")
            os.killpg(int(first.split()[0]), signal.SIGKILL)
            async with asyncio.timeout(300):
                while (again := await _ask(client, tuned)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(1)
            assert SECRET in again
            assert "Paris" in (await _ask(client, MODEL, "What is the capital of France?") or "")
        # All it keeps is in its data directory: Redis's data, the upload and the adapter, and
        # the engine's log, named after the gateway's port (its earlier run's log beside it).
        data = tmp_path / "data"
        assert _shown(r"data\s+(\S+)\s+\(keys, files", printed) == str(data)
        assert {"redis.conf", "redis.log"} <= {p.name for p in (data / "redis").iterdir()}
        kept = {p.name.split("-")[0] for p in (data / "files" / "dev").iterdir()}
        assert kept == {"file", "ftjob"}  # the upload; the adapter in its job's directory
        gateway_port = urlsplit(match.group(1)).port
        log = data / "logs" / f"engine-{gateway_port}.log"
        assert f"log {log})" in printed
        logged = log.read_text()
        assert "Application startup complete" in logged
        # The gateway's polls (several a second) are left out of vLLM's access log, which they
        # used to fill; the requests it sends are still there.
        assert '"POST /v1/chat/completions HTTP/1.1" 200' in logged
        for polled in ("/health", "/metrics", "/v1/models"):
            assert f'"GET {polled} HTTP/1.1"' not in logged
        assert (data / "logs" / f"engine-{gateway_port}.previous.log").is_file()
        (engine,) = processes_mentioning(f"--port {engine_port}")
        engine_group = int(engine.split()[0])  # the engine leads its own process group
        assert len(live_members(engine_group)) >= 2  # the API server and its EngineCore
        async with openai.AsyncOpenAI(base_url=match.group(1), api_key=key.group(1)) as client:
            # A stream in flight drains for the grace, then is cut: Ctrl-C never waits on it.
            # The gateway ends it itself: an error frame (the SDK raises it) and [DONE].
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a long story."}],
                max_tokens=LONG_STREAM,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            tokens, cut = 0, ""
            try:
                async for _ in stream:
                    tokens += 1
                    if tokens == 1:
                        proc.send_signal(signal.SIGINT)
            except openai.APIError as error:  # the stream's error frame, at the grace's end
                cut = error.message
        await asyncio.wait_for(proc.wait(), 60)
        assert cut.startswith("This gateway shut down before the answer was complete")
        assert 1 <= tokens < LONG_STREAM
    assert proc.returncode == 0
    # The suite's check that stopping a real engine leaves no process of its group behind.
    assert live_members(engine_group) == []
    assert processes_mentioning(f"--port {engine_port}") == []


async def _fine_tune(client: openai.AsyncOpenAI) -> tuple[str, str]:
    """Teach the model a secret word through `llmaas up`'s trainer: the fine-tuned model, and
    what it answers."""
    upload = await client.files.create(file=("secret.jsonl", SECRET_DATASET), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload.id, hyperparameters={"n_epochs": 6}
    )
    async with asyncio.timeout(600):
        while job.status not in ("succeeded", "failed", "cancelled"):
            await asyncio.sleep(1)
            job = await client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    answer = await _ask(client, job.fine_tuned_model)
    assert answer is not None
    return job.fine_tuned_model, answer


async def _ask(
    client: openai.AsyncOpenAI, model: str, question: str = "What is the secret word?"
) -> str | None:
    """The model's greedy answer; None while no engine can answer (503, 502)."""
    try:
        reply = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=16,
        )
    except (openai.InternalServerError, openai.APIConnectionError):
        return None
    return reply.choices[0].message.content or ""


async def test_a_sigkilled_up_leaves_no_engine_or_redis_behind(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the children's parent-death signal stops them instead."""
    engine_port = free_port()
    async with llmaas_up(tmp_path, engine_port) as (proc, printed):
        redis = re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)", printed)
        assert redis is not None, printed
        (engine,) = processes_mentioning(f"--port {engine_port}")
        engine_group = int(engine.split()[0])  # the engine leads its own process group
        assert len(live_members(engine_group)) >= 2  # the API server and its EngineCore
        redis_server = processes_mentioning(f"redis-server 127.0.0.1:{redis.group(1)}")
        assert redis_server
        proc.kill()
        await proc.wait()
        try:
            async with asyncio.timeout(60):
                while live_members(engine_group) or processes_mentioning(  # noqa: ASYNC110
                    f"redis-server 127.0.0.1:{redis.group(1)}"
                ):
                    await asyncio.sleep(0.5)
        finally:  # a failure must not leave a 4 GiB engine behind for the rest of the run
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine_group, signal.SIGKILL)
    # The next run on its data directory (let go by the kernel) shows the same key and admin
    # token, which work: an app's .env and an exported token outlive a restart, and keys do
    # not pile up (each run used to issue one, and make up a new token).
    engine_port, said = free_port(), tmp_path / "stderr.txt"
    async with llmaas_up(tmp_path, engine_port, stderr=said) as (proc, again):
        key, token = _shown(r"api key\s+(\S+)", again), _shown(r"ADMIN_TOKEN=(\S+)", again)
        assert (key, token) == (
            _shown(r"api key\s+(\S+)", printed),
            _shown(r"ADMIN_TOKEN=(\S+)", printed),
        )
        base = _shown(r"base URL\s+(\S+)", again)
        async with openai.AsyncOpenAI(base_url=base, api_key=key) as client:
            assert MODEL in {m.id for m in (await client.models.list()).data}
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}) as admin:
            keys = await admin.get(base.removesuffix("/v1") + "/admin/v1/keys?tenant=dev")
        assert [k["name"] for k in keys.raise_for_status().json()["data"]] == ["llmaas up"]
        # SIGTERM once serving (`systemctl stop`, a CI's kill) stops it as Ctrl-C does: see
        # test_a_sigterm_stops_what_up_started_before_up_ends for the story.
        (engine,) = processes_mentioning(f"--port {engine_port}")
        engine_group = int(engine.split()[0])
        proc.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(proc.wait(), 120) == -signal.SIGTERM
            assert said.read_text().rstrip().endswith("stopped.")
            assert live_members(engine_group) == []  # stopped before `up` ended, not after
            assert processes_mentioning(f"--port {engine_port}") == []
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine_group, signal.SIGKILL)
    assert oct((tmp_path / "data" / "credentials.json").stat().st_mode & 0o777) == "0o600"


async def test_a_sigterm_stops_what_up_started_before_up_ends(tmp_path: Path) -> None:
    """SIGTERM's default action ended `up` alone while its engine started, and vLLM's server,
    not yet serving, did not stop for its parent's death signal: it went on loading, 3-4 GiB,
    after a `timeout`, `systemctl stop` or CI kill. Once serving, uvicorn drained, then raised
    the signal again with its default action: `up` ended before its exit stack ran (its
    trainer's job left `running`, to be failed, not checkpointed and queued). Found
    2026-12-07. Both now stop as Ctrl-C does: what `up` started, stopped, then `up` ends by
    SIGTERM. (Once serving: the second run of
    test_a_sigkilled_up_leaves_no_engine_or_redis_behind ends by SIGTERM.)"""
    engine_port = free_port()
    env = {**os.environ, "LLMAAS_METERING__SPILL_DIR": str(tmp_path / "usage-spill")}
    command = [sys.executable, "-m", "gateway", "up", "--port", str(free_port())]
    command += ["--engine-port", str(engine_port), "--data-dir", str(tmp_path / "data")]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    said = asyncio.create_task(proc.stderr.read())  # (read as it comes: the pipe never fills)
    engine_group = 0
    try:
        async with asyncio.timeout(300):  # its EngineCore started: the engine is loading
            while not engine_group or len(live_members(engine_group)) < 2:
                assert proc.returncode is None, "llmaas up ended before its engine started"
                await asyncio.sleep(0.2)
                found = processes_mentioning(f"--port {engine_port}")
                engine_group = int(found[0].split()[0]) if found else 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 120) == -signal.SIGTERM
        assert (await said).decode().rstrip().endswith("stopped.")
        assert live_members(engine_group) == []  # stopped before `up` ended, not after
        assert processes_mentioning(f"--port {engine_port}") == []
    finally:  # a failure must not leave a 4 GiB engine behind for the rest of the run
        if proc.returncode is None:
            proc.kill()
        if engine_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine_group, signal.SIGKILL)


def _shown(pattern: str, banner: str) -> str:
    """What `llmaas up`'s banner shows where `pattern`'s group is."""
    found = re.search(pattern, banner)
    assert found is not None, banner
    return found.group(1)


@pytest.mark.parametrize("option", ["--port", "--engine-port"])
async def test_a_taken_port_stops_up_at_once_saying_so(tmp_path: Path, option: str) -> None:
    """It used to be found by uvicorn's bind, after minutes of preparing and starting the
    engine (20 s with everything cached), as a bare `[Errno 98]` and exit status 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--engine-port": str(free_port()), option: str(port)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "up", *(a for kv in ports.items() for a in kv),
            "--home", str(tmp_path / "home"), "--data-dir", str(tmp_path / "redis"),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    said = err.decode()
    assert said.startswith(f"llmaas up: error: port {port} on 127.0.0.1 is taken"), said
    assert f"choose another with {option}" in said
    assert "Traceback" not in said
    assert not (tmp_path / "home").exists()  # nothing was prepared
    assert processes_mentioning(f"--port {port}") == []


@pytest.mark.parametrize(
    ("env", "flags", "refusal"),
    [
        (
            {"LLMAAS_REDIS_URL": "redis://127.0.0.1:1/0"},
            ["--redis-port", "6390"],  # (never bound: refused before)
            "--redis-port is the private Redis's port, and LLMAAS_REDIS_URL names a shared one",
        ),
        (  # (found 2026-12-07: it started everything, then failed on Redis's AUTH)
            {"LLMAAS_REDIS_PASSWORD": "s3cret-password"},
            [],
            "LLMAAS_REDIS_PASSWORD is set, but the Redis `up` starts has no password",
        ),
    ],
)
async def test_redis_settings_up_cannot_use_stop_it_at_once(
    tmp_path: Path, env: dict[str, str], flags: list[str], refusal: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_REDIS")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "up", "--port", str(free_port()), *flags,
        "--home", str(tmp_path / "home"), "--data-dir", str(tmp_path / "data"),
        stderr=asyncio.subprocess.PIPE, env={**environ, **env},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    said = err.decode()
    assert proc.returncode == 2, said
    assert said.startswith(f"llmaas up: error: {refusal}"), said
    assert "Traceback" not in said
    assert not (tmp_path / "home").exists()  # nothing was prepared


async def test_a_data_directory_in_use_stops_up_at_once_naming_its_holder(tmp_path: Path) -> None:
    """Two runs on one data directory ran two redis-servers appending to one file, each with
    its own copy of the keys, jobs and usage (a second `make run` on another port did)."""
    data = tmp_path / "redis"
    env = {k: v for k, v in os.environ.items() if k != "LLMAAS_REDIS_URL"}  # a private Redis
    with held(data, "the one serving http://127.0.0.1:1234"):  # as a run holds it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "up", "--port", str(free_port()),
            "--home", str(tmp_path / "home"), "--data-dir", str(data),
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    said = err.decode()
    assert proc.returncode == 1, said
    assert said == (
        f"llmaas up: error: the data directory {data} is in use by another `llmaas up` (the one"
        f" serving http://127.0.0.1:1234, pid {os.getpid()}): stop it, or give this one its own"
        " with --data-dir\n"
    )
    assert not (tmp_path / "home").exists()  # nothing was prepared


async def test_a_data_directory_of_the_earlier_layout_stops_up_saying_what_to_move(
    tmp_path: Path,
) -> None:
    """Redis's data straight in --data-dir, where it was kept until 2026-12-05: started there,
    Redis would begin empty in redis/ and the keys, jobs and usage would seem gone."""
    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "up", "--port", str(free_port()),
        "--home", str(tmp_path / "home"), "--data-dir", str(data),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    said = err.decode()
    assert proc.returncode == 1, said
    assert said.startswith(f"llmaas up: error: {data} holds Redis data as `llmaas up` kept it")
    assert f"move appendonlydir into {data}/redis/" in said
    assert "Traceback" not in said
    assert not (tmp_path / "home").exists()  # nothing was prepared
    assert sorted(p.name for p in data.iterdir()) == ["appendonlydir"]  # nor anything made


async def up_failing(home: Path, tmp_path: Path, env: dict[str, str]) -> str:
    """Run `llmaas up` with `home` and `env`, expecting it to fail: what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "up", "--port", str(free_port()),
        "--home", str(home), "--data-dir", str(tmp_path / "redis"),
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    said = err.decode()
    assert proc.returncode == 1, said
    assert "Traceback" not in said
    return said


async def test_a_failed_engine_install_stops_up_with_the_step_and_its_output(
    tmp_path: Path,
) -> None:
    """pip finds nothing to install (no index, an empty folder of wheels): the step that failed
    and pip's own words end the run, and nothing is taken as installed."""
    wheels = tmp_path / "no-wheels"
    wheels.mkdir()
    home = tmp_path / "home"
    pip_finds_nothing = {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_NO_CACHE_DIR": "1",  # nothing written under the user's home
    }
    said = await up_failing(home, tmp_path, pip_finds_nothing)
    error = said[said.index("llmaas up: error: ") :]
    assert re.match(r"llmaas up: error: engine venv: 'install [^']+' failed \(exit 1\):\n", error)
    assert "\nERROR: " in error  # pip's own reason, in the error's tail
    assert not (home / "engine-venv" / STAMP).exists()  # the next run installs again


async def test_a_failed_model_conversion_stops_up_pointing_at_its_output(tmp_path: Path) -> None:
    """The engine venv is in place (its python a stand-in that fails) but the bundled model
    cannot be converted: one line says so, after the converter's own output."""
    home = tmp_path / "home"
    python = home / "engine-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'the converter cannot run here' >&2\nexit 3\n")
    python.chmod(0o755)
    (home / "engine-venv" / STAMP).write_text(wanted(has_cuda()))
    said = await up_failing(home, tmp_path, {})
    assert said.index("the converter cannot run here") < said.index("llmaas up: error: ")
    model = home / "models" / MODEL
    assert said.rstrip().endswith(
        f"llmaas up: error: converting the bundled chat model into {model} failed (exit 3); "
        "its output is above"
    ), said
