"""SIGTERM under load, on a real `llmaas serve` process: readiness turns to "draining", new
requests (kept-alive connections included) get a clean 503, streams in flight finish within
the grace (fractions honoured) or are cut at its end (an error frame and `[DONE]`; a request
not answered yet, a 503), and every request the engine saw is billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.embedded.redis_server import running_redis
from gateway.metering.record import UsageRecord
from gateway.metering.spill import count_lines
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.gateways import (
    OPS,
    GatewayProcess,
    gateway_process,
    shared_config,
    tenant_key,
)
from tests.support.logs import logged_messages
from tests.support.processes import process_running
from tests.support.redis_control import redis_proxy
from tests.support.usage_records import ledger_records

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT = "drain"
STOPPED_BY_SIGTERM = -signal.SIGTERM  # uvicorn re-raises the signal it caught, after shutdown
DONE = "data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Fleet:
    gw: GatewayProcess
    sim: str
    redis_url: str
    key: dict[str, str]
    http: aiohttp.ClientSession


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    sim: SimConfig,
    grace_s: float,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Fleet]:
    async with (
        running_redis(None) as redis_url,
        running_sim(sim) as sim_url,
        aiohttp.ClientSession() as http,
    ):
        extra = f"shutdown_grace_s: {grace_s}\nmetering:\n  spill_dir: {tmp_path}/spill\n"
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim_url, extra=extra
        )
        # A supervisor killed outright leaves its temporary directories (metrics, config copy)
        temporary = tmp_path / "tmp"
        temporary.mkdir()
        env = {"TMPDIR": str(temporary), **(env or {})}
        async with gateway_process(config, *args, log=tmp_path / "gw.log", env=env) as gw:
            key = await tenant_key(http, gw.url, TENANT)
            yield Fleet(gw, sim_url, redis_url, key, http)


async def stream(f: Fleet, started: asyncio.Event) -> str:
    """One streamed chat completion: set `started` at its first chunk; its text, "cut" if the
    connection ended before the end of the stream."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = f"{f.gw.url}/v1/chat/completions"
    text = b""
    try:
        async with f.http.post(url, json=body, headers=f.key) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                started.set()
                text += chunk
    except aiohttp.ClientPayloadError:
        return "cut"
    return text.decode()


async def streams_in_flight(f: Fleet, count: int) -> list[asyncio.Task[str]]:
    """`count` streams, each past its first chunk (so the engine has them) on return."""
    starts = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(stream(f, s)) for s in starts]
    async with asyncio.timeout(30):
        await asyncio.gather(*(s.wait() for s in starts))
    return tasks


async def unanswered(f: Fleet) -> asyncio.Task[tuple[int, Any]]:
    """A non-streamed chat completion the engine has begun (its status and body, later)."""
    seen = (await sim_state(f.http, f.sim))["total_requests"]

    async def call() -> tuple[int, Any]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        url = f"{f.gw.url}/v1/chat/completions"
        async with f.http.post(url, json=body, headers=f.key) as resp:
            return resp.status, await resp.json()

    task = asyncio.create_task(call())
    async with asyncio.timeout(30):
        while True:  # until the engine has it
            if (await sim_state(f.http, f.sim))["total_requests"] > seen:
                break
            await asyncio.sleep(0.02)
    return task


def cut_with_an_error_frame(text: str) -> bool:
    """The stream ended with the gateway's gateway_shutdown error frame, then `[DONE]`."""
    frames = [frame for frame in text.split("\n\n") if frame]
    if len(frames) < 3 or frames[-1] != "data: [DONE]":
        return False
    error = orjson.loads(frames[-2].removeprefix("data: ")).get("error", {})
    return bool(error.get("code") == "gateway_shutdown")


async def records(redis_url: str) -> list[UsageRecord]:
    return await ledger_records(redis_url, TENANT)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Reply:
    """One HTTP/1.1 request on an open connection (so it is the same kept-alive one)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status_line, *lines = head.strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return Reply(int(status_line.split()[1]), headers, orjson.loads(body))


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n".encode()


def post_chat(key: dict[str, str]) -> bytes:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
        f"authorization: {key['authorization']}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_streams_in_flight_finish_whole_within_a_fractional_grace(tmp_path: Path) -> None:
    sim = SimConfig(models=[MODEL], max_tokens=20, itl_ms=40)  # ~0.8 s per stream
    async with fleet(tmp_path, sim, grace_s=1.5) as f:
        tasks = await streams_in_flight(f, 4)
        f.gw.process.send_signal(signal.SIGTERM)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert await asyncio.wait_for(f.gw.process.wait(), 30) == STOPPED_BY_SIGTERM
        seen = (await sim_state(f.http, f.sim))["total_requests"]
        billed = await records(f.redis_url)
    assert all(t.endswith(DONE) for t in texts), texts
    logged = (tmp_path / "gw.log").read_text()
    assert "draining: 4 requests in flight, cut after 1.5s" in logged, logged
    assert (
        logged.index("draining:")
        < logged.index("shutdown: closing")
        < logged.index("shutdown: done")
    )
    assert seen == len(billed) == 4
    assert {r.outcome for r in billed} == {"ok"}
    assert not list((tmp_path / "spill").glob("*.jsonl"))  # flushed to Redis, none spilled


def tokens_by_kind(billed: list[UsageRecord]) -> dict[str, Any]:
    """Whether every stream was billed tokens, and the plain requests' (prompt, completion)."""
    return {
        "stream": all(r.completion_tokens > 0 for r in billed if r.stream),
        "plain": [(r.prompt_tokens, r.completion_tokens) for r in billed if not r.stream],
    }


def draining(log: Path) -> int:
    """How many gateway processes have begun to drain, by their log lines."""
    return sum(1 for message in logged_messages(log) if message.startswith("draining: "))


async def draining_everywhere(f: Fleet, processes: int, log: Path) -> Any:
    """Once /readyz says draining and each of the gateway's `processes` has begun to drain
    (the supervisor relays the signal: one worker's 503 came while the other, holding a test's
    kept-alive connection, still served, under load in CI): /readyz's body."""
    async with asyncio.timeout(30):
        while True:  # the signal is handled between two bytecodes: soon, not at once
            async with f.http.get(f"{f.gw.url}/readyz") as resp:
                if resp.status == 503:
                    ready = await resp.json()
                    break
            await asyncio.sleep(0.02)
        while draining(log) < processes:  # noqa: ASYNC110 (a log file: no event)
            await asyncio.sleep(0.02)
    return ready


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_draining_refuses_cleanly_then_cuts_at_the_grace_and_bills_all(
    tmp_path: Path, workers: str
) -> None:
    """With several workers, uvicorn's supervisor passes SIGTERM on to each: all drain."""
    sim = SimConfig(models=[MODEL], max_tokens=300, itl_ms=100)  # ~30 s per stream
    async with fleet(tmp_path, sim, 2.5, "--workers", workers) as f:
        host, port = f.gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            assert (await exchange(reader, writer, get("/healthz"))).status == 200
            tasks = await streams_in_flight(f, 3)
            waiting = await unanswered(f)
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            f.gw.process.send_signal(signal.SIGTERM)
            ready = await draining_everywhere(f, int(workers), tmp_path / "gw.log")
            refused = await exchange(reader, writer, post_chat(f.key))
            closed = await asyncio.wait_for(reader.read(), 30)  # the server ends the connection
        finally:
            writer.close()
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        status, answer = await asyncio.wait_for(waiting, 30)
        exit_code = await asyncio.wait_for(f.gw.process.wait(), 30)
        exited_after_s = loop.time() - signalled
        seen = (await sim_state(f.http, f.sim))["total_requests"]
        billed = await records(f.redis_url)
    assert ready == {"status": "draining"}
    assert refused.status == 503
    assert refused.body["error"]["code"] == "gateway_draining"
    assert refused.body["error"]["type"] == "service_unavailable"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert closed == b""
    # A single process re-raises the SIGTERM it caught, and so does the supervisor of workers.
    assert exit_code == STOPPED_BY_SIGTERM  # (the supervisor of several ends by it too)
    # At the grace, what was in flight was answered, not dropped: no uvicorn cancellation.
    assert all(cut_with_an_error_frame(text) for text in texts), texts
    assert status == 503
    assert answer["error"]["code"] == "gateway_shutdown"
    logged = (tmp_path / "gw.log").read_text()
    assert "Exception in ASGI application" not in logged, logged
    assert "timeout graceful shutdown exceeded" not in logged, logged
    cut = [int(n) for n in re.findall(r"grace over: \d+ requests in flight, (\d+) cut", logged)]
    assert sum(cut) == 4, logged  # (each worker cuts its own)
    # The streams had ~27 s to go: the process ended at the grace, not with them.
    assert exited_after_s < 15, exited_after_s
    assert seen == len(billed) == 4  # the refused request never reached the engine
    assert {r.outcome for r in billed} == {"gateway_shutdown"}
    # The streams are billed what they carried; the plain request, answered 503 with no part
    # of its answer after ~2.5 s of generation, nothing (its SDK retries it).
    assert tokens_by_kind(billed) == {"stream": True, "plain": [(0, 0)]}, billed


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_sigterm_cuts_at_once_what_the_grace_would_have_waited_for(
    tmp_path: Path, workers: str
) -> None:
    """README: 'a second signal stops at once' (the log says 'a second signal stops now'); it
    waited for the streams or the rest of the grace all the same (a 10 s stream held it 9.5 s),
    and the supervisor of several workers did not pass it on at all."""
    sim = SimConfig(models=[MODEL], max_tokens=300, itl_ms=100)  # ~30 s per stream
    async with fleet(tmp_path, sim, 60, "--workers", workers) as f:
        tasks = await streams_in_flight(f, 2)
        f.gw.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            while True:  # draining
                async with f.http.get(f"{f.gw.url}/readyz") as resp:
                    if resp.status == 503:
                        break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # (the supervisor relays the first one within 0.5 s)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        f.gw.process.send_signal(signal.SIGTERM)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        exit_code = await asyncio.wait_for(f.gw.process.wait(), 30)
        exited_after_s = loop.time() - signalled
        billed = await records(f.redis_url)
    assert exited_after_s < 6, exited_after_s  # the streams had ~28 s to go, the grace 60 s
    assert exit_code == STOPPED_BY_SIGTERM
    assert all(cut_with_an_error_frame(text) for text in texts), texts
    assert {r.outcome for r in billed} == {"gateway_shutdown"}
    assert len(billed) == 2
    # (it said "grace over", 2 s into a 60-s grace: found by review)
    cuts = re.findall(r"(.*): \d+ requests in flight, \d+ cut", (tmp_path / "gw.log").read_text())
    assert cuts
    assert all(said.endswith("a second signal") for said in cuts), cuts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_signal_to_the_whole_group_drains_every_worker_within_the_grace(
    tmp_path: Path, workers: str, sig: signal.Signals
) -> None:
    """A terminal's Ctrl-C is a SIGINT to every process of its group, and systemd stops a
    service with a SIGTERM to every process: each worker took the supervisor's relayed signal
    for a second one and cut its streams at once."""
    sim = SimConfig(models=[MODEL], max_tokens=60, itl_ms=50)  # ~3 s per stream
    async with fleet(tmp_path, sim, 10, "--workers", workers) as f:
        tasks = await streams_in_flight(f, 3)
        group = [f.gw.process.pid, *worker_pids(f.gw.process.pid)]
        assert len(group) == (1 if workers == "1" else 3)
        for pid in group:  # what the terminal (or systemd) does
            os.kill(pid, sig)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        exit_code = await asyncio.wait_for(f.gw.process.wait(), 30)
        billed = await records(f.redis_url)
    assert all(text.endswith("data: [DONE]\n\n") for text in texts), texts
    assert not any(cut_with_an_error_frame(text) for text in texts), texts  # whole
    # (one process exits 130 at a SIGINT; a shell shows both as 130)
    assert exit_code in ((130, -signal.SIGINT) if sig == signal.SIGINT else (-signal.SIGTERM,))
    assert {r.outcome for r in billed} == {"ok"}, billed


async def test_a_request_still_sending_its_body_at_the_grace_is_answered_503(
    tmp_path: Path,
) -> None:
    """Not proxied yet (its body, or an upload, still coming), it was left to uvicorn, which
    cancelled it and answered a plain-text 500 with a traceback in the log."""
    sim = SimConfig(models=[MODEL])
    async with fleet(tmp_path, sim, 1.0) as f:
        host, port = f.gw.url.removeprefix("http://").split(":")
        heads = {
            "chat": b"POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n",
            "upload": b"POST /v1/files HTTP/1.1\r\n"
            b"content-type: multipart/form-data; boundary=b\r\n",
        }
        connections = {}
        for name, request_line in heads.items():
            reader, writer = await asyncio.open_connection(host, int(port))
            key = f.key["authorization"].encode()
            writer.write(request_line + b"host: gw\r\nauthorization: " + key)
            writer.write(b"\r\ncontent-length: 4000\r\n\r\n")
            writer.write(  # part of the body, then silence
                b'{"model": "'
                if name == "chat"
                else b'--b\r\ncontent-disposition: form-data; name="file"; filename="a"\r\n\r\n'
            )
            await writer.drain()
            connections[name] = reader, writer
        await asyncio.sleep(0.3)  # both inside the gateway, reading
        f.gw.process.send_signal(signal.SIGTERM)
        replies = {}
        for name, (reader, writer) in connections.items():
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode()
            status_line, *lines = head.strip().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
            body = orjson.loads(await reader.readexactly(int(headers["content-length"])))
            replies[name] = int(status_line.split()[1]), headers, body
            writer.close()
        await asyncio.wait_for(f.gw.process.wait(), 30)
    for name, (status, headers, body) in replies.items():
        assert (status, body["error"]["code"]) == (503, "gateway_shutdown"), (name, body)
        assert headers["retry-after"] == "1"
    logged = (tmp_path / "gw.log").read_text()
    assert "Exception in ASGI application" not in logged, logged
    assert "grace over: 2 requests in flight, 2 cut" in logged, logged


def worker_pids(supervisor: int) -> list[int]:
    """The uvicorn workers of `llmaas serve --workers N` (multiprocessing's spawned children;
    its resource tracker is not one)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == supervisor and b"spawn_main" in command:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_workers_of_a_supervisor_killed_outright_drain_and_stop(tmp_path: Path) -> None:
    """`llmaas serve --workers 2` whose supervisor is SIGKILLed (the OOM killer, an operator's
    kill -9): its workers went on serving the port unsupervised, for good, and a new `llmaas
    serve` on that port failed with 'Address already in use'. Now each drains as at a SIGTERM:
    the stream in flight finishes and is billed, then the worker exits and frees the port."""
    sim = SimConfig(models=[MODEL], max_tokens=20, itl_ms=50)  # ~1 s per stream
    async with fleet(tmp_path, sim, 10, "--workers", "2") as f:
        workers = worker_pids(f.gw.process.pid)
        try:
            assert len(workers) == 2
            [task] = await streams_in_flight(f, 1)
            f.gw.process.send_signal(signal.SIGKILL)
            await f.gw.process.wait()
            text = await asyncio.wait_for(task, 30)
            async with asyncio.timeout(30):
                while any(process_running(pid) for pid in workers):  # noqa: ASYNC110 (no event: /proc)
                    await asyncio.sleep(0.05)
            with pytest.raises(aiohttp.ClientConnectionError):
                await f.http.get(f"{f.gw.url}/healthz")
            billed = await records(f.redis_url)
        finally:
            for pid in workers:  # the old code's orphans: never left running
                if process_running(pid):
                    os.kill(pid, signal.SIGKILL)
    assert text.endswith(DONE)
    assert [(r.outcome, r.completion_tokens) for r in billed] == [("ok", 20)]


@asynccontextmanager
async def replacing_workers(f: Fleet) -> AsyncIterator[set[int]]:
    """The two workers of `f`'s supervisor as the block begins, in a set the block adds the
    workers it starts to (`replaced`); on leaving, the supervisor is killed outright and every
    worker, the replacements too, must stop within 30 s (any still running is killed)."""
    workers = set(worker_pids(f.gw.process.pid))
    assert len(workers) == 2
    try:
        yield workers
        async with f.http.get(f"{f.gw.url}/healthz") as resp:
            assert resp.status == 200
        f.gw.process.send_signal(signal.SIGKILL)
        await f.gw.process.wait()
        async with asyncio.timeout(30):
            while any(process_running(pid) for pid in workers):  # noqa: ASYNC110 (no event: /proc)
                await asyncio.sleep(0.05)
    finally:
        for pid in workers:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)


async def replaced(f: Fleet, workers: set[int], gone: set[int], timeout_s: float) -> None:
    """Until two workers run and none of `gone` is among them; each seen joins `workers`."""
    async with asyncio.timeout(timeout_s):
        while True:
            alive = {pid for pid in worker_pids(f.gw.process.pid) if process_running(pid)}
            workers |= alive
            if len(alive) == 2 and not alive & gone:
                return
            await asyncio.sleep(0.1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_worker_that_dies_is_logged_and_replaced_by_one_that_stops_with_the_rest(
    tmp_path: Path,
) -> None:
    """uvicorn replaced a dead worker with its plain one, which did not drain and outlived a
    supervisor killed outright (serving the port unsupervised, as the test above once found
    of every worker), and said so only at info, below the gateway's log level."""
    async with (
        fleet(tmp_path, SimConfig(models=[MODEL]), 10, "--workers", "2") as f,
        replacing_workers(f) as workers,
    ):
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        await replaced(f, workers, {killed}, 30)
        said = [orjson.loads(line) for line in (tmp_path / "gw.log").read_bytes().splitlines()]
        deaths = [
            (line["level"], line["logger"], line["msg"])
            for line in said
            if line["msg"].startswith("worker ")
        ]
        message = f"worker {killed} was killed by SIGKILL: starting another"
        assert deaths == [("warning", "llmaas.server", message)]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_workers_restarted_at_sighup_stop_with_their_supervisor(tmp_path: Path) -> None:
    """SIGHUP replaces every worker (uvicorn's restart), and uvicorn's replacements were its
    plain workers too: they outlived a supervisor killed outright."""
    async with (
        fleet(tmp_path, SimConfig(models=[MODEL]), 10, "--workers", "2") as f,
        replacing_workers(f) as workers,
    ):
        f.gw.process.send_signal(signal.SIGHUP)
        await replaced(f, workers, set(workers), 60)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_the_gauges_of_workers_that_died_leave_metrics(tmp_path: Path) -> None:
    """A dead worker's gauge files stayed in the metrics directory and in /metrics' sums for
    good: its streams were `llmaas_inflight_requests` (and an engine it had ejected
    `llmaas_engine_up 0`, firing LlmaasEngineDown) until the gateway restarted."""
    sim = SimConfig(models=[MODEL], max_tokens=400, itl_ms=50)  # ~20 s per stream
    async with (
        fleet(tmp_path, sim, 10, "--workers", "2") as f,
        replacing_workers(f) as workers,
    ):
        tasks = await streams_in_flight(f, 2)
        first = set(workers)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        await replaced(f, workers, first, 30)
        assert set(await asyncio.gather(*tasks)) == {"cut"}
        async with f.http.get(f"{f.gw.url}/metrics", headers=OPS) as resp:
            text = await resp.text()
    inflight = re.findall(r"^llmaas_inflight_requests\{[^}]*\} (\S+)$", text, re.M)
    assert [float(v) for v in inflight] in ([], [0.0]), text


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_hangup_to_the_whole_group_stops_nothing(tmp_path: Path, workers: str) -> None:
    """Found by review: SIGHUP (a terminal's hangup, a `systemctl reload`) killed a single
    `llmaas serve` on its default action, and every worker of `--workers N` when the group
    got it: streams cut without an error frame, never billed. Now a single process goes on
    and says that it reloads nothing; the workers leave it to their supervisor, which reloads
    (each old worker drains: the streams finish whole)."""
    sim = SimConfig(models=[MODEL], max_tokens=60, itl_ms=50)  # ~3 s per stream
    async with fleet(tmp_path, sim, 10, "--workers", workers) as f:
        tasks = await streams_in_flight(f, 2)
        before = set(worker_pids(f.gw.process.pid))
        for pid in [f.gw.process.pid, *before]:  # what a terminal's hangup does
            os.kill(pid, signal.SIGHUP)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        if workers == "2":  # reloaded: new workers, the old ones drained
            async with asyncio.timeout(60):
                while before & set(worker_pids(f.gw.process.pid)):  # noqa: ASYNC110 (/proc)
                    await asyncio.sleep(0.1)
        async with f.http.get(f"{f.gw.url}/v1/models", headers=f.key) as resp:
            assert resp.status == 200
        assert f.gw.process.returncode is None
        f.gw.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(f.gw.process.wait(), 30) == STOPPED_BY_SIGTERM
        billed = await records(f.redis_url)
    assert all(text.endswith(DONE) for text in texts), texts
    assert not any(cut_with_an_error_frame(text) for text in texts), texts
    assert [r.outcome for r in billed] == ["ok", "ok"], billed
    said = [orjson.loads(line) for line in (tmp_path / "gw.log").read_bytes().splitlines()]
    hangups = [line["msg"] for line in said if "SIGHUP" in line["msg"]]
    if workers == "1":
        assert hangups == [
            "SIGHUP ignored: a reload needs --workers N (N > 1); SIGTERM stops the gateway"
        ]
    else:
        assert hangups == [], hangups  # (not one "worker N was killed by SIGHUP")


def gauge_pids(metrics: Path) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in metrics.glob("gauge_live*_*.db")}


def alive_workers(f: Fleet) -> set[int]:
    return {pid for pid in worker_pids(f.gw.process.pid) if process_running(pid)}


async def workers_become(f: Fleet, count: int) -> set[int]:
    async with asyncio.timeout(60):
        while len(alive := alive_workers(f)) != count:  # noqa: ASYNC110 (no event: /proc)
            await asyncio.sleep(0.1)
    return alive


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_sigttou_forgets_the_worker_it_stops_and_sigttin_adds_a_draining_one(
    tmp_path: Path,
) -> None:
    """Found by review: SIGTTIN added uvicorn's plain worker (it did not drain, and outlived a
    supervisor killed outright, serving the port), and SIGTTOU left the gauges of the worker
    it stopped in /metrics' sums for good."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    async with (
        fleet(
            tmp_path,
            SimConfig(models=[MODEL]),
            10,
            "--workers",
            "2",
            env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)},
        ) as f,
        replacing_workers(f) as workers,
    ):
        f.gw.process.send_signal(signal.SIGTTOU)
        [left] = await workers_become(f, 1)
        async with asyncio.timeout(10):  # (the retired worker is reaped by the next round)
            while gauge_pids(metrics) != {left}:  # noqa: ASYNC110 (files)
                await asyncio.sleep(0.1)
        f.gw.process.send_signal(signal.SIGTTIN)
        workers.update(await workers_become(f, 2))  # (each must stop with the supervisor)
    said = logged_messages(tmp_path / "gw.log")
    assert [m for m in said if m.startswith("SIGTT")] == [
        "SIGTTOU: one worker fewer (1)",
        "SIGTTIN: one worker more (2)",
    ]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_worker_slow_to_answer_its_health_check_is_not_killed(tmp_path: Path) -> None:
    """Found by review: the supervisor waited 5 s (uvicorn's default) for a worker's answer,
    and killed workers still importing on a busy machine as "stopped answering". A worker
    stopped for 7 s (SIGSTOP: what a starved one looks like) now comes back and goes on."""
    async with (
        fleet(tmp_path, SimConfig(models=[MODEL]), 10, "--workers", "2") as f,
        replacing_workers(f) as workers,
    ):
        slow = min(workers)
        os.kill(slow, signal.SIGSTOP)
        try:
            await asyncio.sleep(7)
        finally:
            with contextlib.suppress(ProcessLookupError):  # (the old code killed it)
                os.kill(slow, signal.SIGCONT)
        await asyncio.sleep(1)  # (the supervisor's next round of checks)
        assert alive_workers(f) == workers
    said = logged_messages(tmp_path / "gw.log")
    assert not [m for m in said if m.startswith("worker ")], said


async def logged_line(log: Path, start: str) -> str:
    """The first JSON line of `log` whose message starts with `start`, once it is there."""
    async with asyncio.timeout(30):
        while True:
            for message in await asyncio.to_thread(logged_messages, log):
                if message.startswith(start):
                    return message
            await asyncio.sleep(0.1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_config_file_gone_bad_is_taken_neither_by_a_replacement_nor_at_sighup(
    tmp_path: Path,
) -> None:
    """Found by review: each worker read the config file itself, so after a wrong edit the
    replacement of a crashed worker exited 1 with a traceback, and so did its replacement, in
    a loop; and a SIGHUP then logged the traceback and 'not ready in time'. Now replacements
    read the copy the supervisor last found usable, and a SIGHUP checks the file first: one
    error line naming what is wrong (never the value), and every worker kept."""
    log = tmp_path / "gw.log"
    async with (
        fleet(tmp_path, SimConfig(models=[MODEL]), 10, "--workers", "2") as f,
        replacing_workers(f) as workers,
    ):
        config = tmp_path / "gw.yaml"
        good = config.read_text()
        config.write_text(good + "keep_alive_s: hush-hush\n")  # an edit not reloaded yet
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        await replaced(f, workers, {killed}, 30)
        serving = alive_workers(f)
        async with f.http.get(f"{f.gw.url}/v1/models", headers=f.key) as resp:
            assert resp.status == 200
        f.gw.process.send_signal(signal.SIGHUP)
        refused = await logged_line(log, "SIGHUP: ")
        assert alive_workers(f) == serving  # none replaced
        config.write_text(good + "keep_alive_s: 30\n")  # fixed: the reload goes ahead
        f.gw.process.send_signal(signal.SIGHUP)
        await replaced(f, workers, serving, 60)
    assert refused.startswith(f"SIGHUP: invalid configuration: {config}: keep_alive_s: "), refused
    assert refused.endswith("; no worker restarted"), refused
    text = log.read_text()
    assert "hush-hush" not in text
    said = logged_messages(log)  # all JSON
    deaths = [m for m in said if m.startswith("worker ")]
    assert deaths == [f"worker {killed} was killed by SIGKILL: starting another"], deaths


async def streams_on_each_worker(f: Fleet, count: int) -> list[asyncio.Task[str]]:
    """`count` streams in flight on each worker of `f`: while one worker is stopped
    (SIGSTOP), the other accepts every connection."""
    workers = set(worker_pids(f.gw.process.pid))
    tasks = []
    for pid in workers:
        others = workers - {pid}
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            tasks += await streams_in_flight(f, count)
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
    return tasks


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_sigterm_during_a_reload_stops_every_worker_within_the_grace(
    tmp_path: Path,
) -> None:
    """Found by review: a reload (SIGHUP) waited for each old worker's drain in turn, and a
    SIGTERM meanwhile waited for the whole reload: about N times shutdown_grace_s, past what the
    chart's terminationGracePeriodSeconds allows. Now the old workers drain side by side and
    a SIGTERM stops the reload: every worker, old or new, is done within about one grace."""
    sim = SimConfig(models=[MODEL], max_tokens=600, itl_ms=50)  # ~30 s per stream
    log = tmp_path / "gw.log"
    async with (
        fleet(tmp_path, sim, 8, "--workers", "2") as f,
        aiohttp.ClientSession() as fresh,  # (no kept-alive connection to either worker)
    ):
        tasks = await streams_on_each_worker(replace(f, http=fresh), 2)
        f.gw.process.send_signal(signal.SIGHUP)
        await logged_line(log, "draining: ")  # the first old worker retires
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        f.gw.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(f.gw.process.wait(), 60)
        exited_after_s = loop.time() - signalled
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        billed = await records(f.redis_url)
    assert exit_code == STOPPED_BY_SIGTERM
    # one grace (8 s) and the answers' ends; the old code took two graces and a start (~18 s)
    assert exited_after_s < 14, exited_after_s
    assert all(cut_with_an_error_frame(text) for text in texts), texts
    assert len(billed) == 4


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_worker_retired_at_a_reload_leaves_new_connections_to_the_others(
    tmp_path: Path,
) -> None:
    """Found by review: during a reload the old worker, draining, still accepted connections
    on the socket it shares with the others, and answered them 503 `gateway_draining` (and
    /readyz "draining") while its replacement served. Here every other worker is stopped
    (SIGSTOP) while a client connects: the retiring worker must leave the connection to them."""
    sim = SimConfig(models=[MODEL], max_tokens=600, itl_ms=50)  # ~30 s per stream
    async with (
        fleet(tmp_path, sim, 20, "--workers", "2") as f,
        aiohttp.ClientSession() as fresh,  # (no kept-alive connection to either worker)
    ):
        first = set(worker_pids(f.gw.process.pid))
        tasks = await streams_on_each_worker(replace(f, http=fresh), 1)
        f.gw.process.send_signal(signal.SIGHUP)
        await logged_line(tmp_path / "gw.log", "draining: ")  # the first old worker retires
        await asyncio.sleep(0.5)  # (it closes its listener at its next tick: 0.1 s)
        retiring = min(first)  # (replaced first: the first started)
        others = alive_workers(f) - {retiring}
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            async with aiohttp.ClientSession() as client:
                probe = asyncio.create_task(client.get(f"{f.gw.url}/readyz"))
                await asyncio.sleep(1)  # (the retiring worker took it in this time)
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
                async with await asyncio.wait_for(probe, 30) as resp:
                    status, body = resp.status, await resp.json()
        finally:
            for pid in others:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        for task in tasks:
            task.cancel()
    assert (status, body) == (200, {"status": "ready"})


@pytest.mark.parametrize("other", [signal.SIGWINCH, signal.SIGHUP])
async def test_a_signal_other_than_a_stop_during_a_drain_cuts_nothing(
    tmp_path: Path, other: signal.Signals
) -> None:
    """Found by review: during `--workers N`'s drain, any signal to the supervisor (a terminal
    resized: SIGWINCH; closed: SIGHUP) was taken for a second stop: every stream cut at once."""
    sim = SimConfig(models=[MODEL], max_tokens=60, itl_ms=50)  # ~3 s per stream
    async with fleet(tmp_path, sim, 20, "--workers", "2") as f:
        tasks = await streams_in_flight(f, 2)
        f.gw.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        f.gw.process.send_signal(other)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert await asyncio.wait_for(f.gw.process.wait(), 30) == STOPPED_BY_SIGTERM
    assert not any(cut_with_an_error_frame(text) for text in texts), texts
    assert all(text.endswith(DONE) for text in texts), texts


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_sigterm_is_not_held_behind_a_silent_workers_health_check(tmp_path: Path) -> None:
    """Found by review: the supervisor's health check waited 30 s for a worker's answer, and a
    SIGTERM meanwhile waited with it (then a worker was started after it): past a pod's
    termination budget. Each check waits 1 s; the silent worker is killed only after 30 s."""
    async with fleet(tmp_path, SimConfig(models=[MODEL]), 10, "--workers", "2") as f:
        silent = min(worker_pids(f.gw.process.pid))
        os.kill(silent, signal.SIGSTOP)  # (what a starved or hung worker looks like)
        try:
            await asyncio.sleep(2)  # the supervisor's checks meet its silence
            f.gw.process.send_signal(signal.SIGTERM)
            # the other worker drains now (it waited for the 30-s check to end)
            await asyncio.wait_for(logged_line(tmp_path / "gw.log", "draining"), 10)
        finally:
            os.kill(silent, signal.SIGCONT)  # (it drains too, and the supervisor ends)
        assert await asyncio.wait_for(f.gw.process.wait(), 30) == STOPPED_BY_SIGTERM
    said = logged_messages(tmp_path / "gw.log")
    assert not [m for m in said if m.startswith("worker ")], said  # none killed, none started


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_worker_that_does_not_stop_is_killed_and_the_supervisor_exits(
    tmp_path: Path,
) -> None:
    """Found by review: at a SIGTERM the supervisor of `--workers N` waited for every worker's
    drain with no end: one hung (here stopped: SIGSTOP) kept it running for good, past any
    pod's termination budget. Past the worker's grace, answers' ends and flush (and a margin)
    it is killed, named in the log, and the supervisor ends by its SIGTERM."""
    env = {"LLMAAS_METERING__FLUSH_TIMEOUT_S": "1"}  # a stop is 1 + 2 + 1 s, and the margin
    async with fleet(tmp_path, SimConfig(models=[MODEL]), 1, "--workers", "2", env=env) as f:
        hung = min(worker_pids(f.gw.process.pid))
        os.kill(hung, signal.SIGSTOP)
        try:
            f.gw.process.send_signal(signal.SIGTERM)
            # a hang check, not a timing: the old supervisor never exited
            exit_code = await asyncio.wait_for(f.gw.process.wait(), 60)
            gone = not process_running(hung)
        finally:
            if process_running(hung):
                os.kill(hung, signal.SIGKILL)
    assert exit_code == STOPPED_BY_SIGTERM
    assert gone
    said = logged_messages(tmp_path / "gw.log")
    killed = [m for m in said if m.startswith("worker ")]
    assert len(killed) == 1, said
    assert re.fullmatch(rf"worker {hung} killed: did not stop within \d+s", killed[0]), killed


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_reload_that_lengthens_the_usage_flush_is_waited_for_at_the_stop(
    tmp_path: Path,
) -> None:
    """Found by review: the supervisor's wait for a worker's stop was reckoned once, from the
    flush_timeout_s it started with; after a SIGHUP that lengthened it, a worker still flushing
    to a Redis that did not answer, within its own flush_timeout_s, was killed at the shorter
    wait, and the usage records it held were lost (neither written nor spilled)."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        async with redis_proxy(port) as proxy:

            def config(flush_s: float) -> Path:
                extra = (
                    f"shutdown_grace_s: 1\nauth: {{required: false}}\n"
                    f"metering: {{spill_dir: {tmp_path}/spill, flush_timeout_s: {flush_s}}}\n"
                )
                path = tmp_path / "gw.yaml"
                return shared_config(path, redis_url=proxy.url, model=MODEL, sim=sim, extra=extra)

            log = tmp_path / "gw.log"
            # A stop waits 1 + 2 + 1 s and the margin (5 s) at the start; 1 + 2 + 12 + 5 after.
            async with gateway_process(config(1), "--workers", "2", log=log) as gw:
                first = set(worker_pids(gw.process.pid))
                config(12)
                gw.process.send_signal(signal.SIGHUP)
                async with asyncio.timeout(60):  # the new workers serve, the old ones are gone
                    while (now := set(worker_pids(gw.process.pid))) & first or len(now) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                proxy.set_mode("stall")  # Redis takes the settlements and never answers
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                for _ in range(4):
                    url = f"{gw.url}/v1/chat/completions"
                    async with http.post(url, json=body) as resp:
                        assert resp.status == 200
                gw.process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(gw.process.wait(), 90) == STOPPED_BY_SIGTERM
    said = logged_messages(log)
    assert not [m for m in said if " killed: " in m], said
    spilled = list((tmp_path / "spill").glob("*.jsonl"))
    assert sum(count_lines(f) for f in spilled) == 4  # every record, spilled after 12 s


def workers_in_order(supervisor: int) -> list[int]:
    """The supervisor's workers in the order it started them (the kernel lists a process's
    children so): SIGTTOU retires the last."""
    children = (Path("/proc") / str(supervisor) / "task" / str(supervisor) / "children").read_text()
    workers = set(worker_pids(supervisor))
    return [int(pid) for pid in children.split() if int(pid) in workers]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc (Linux)")
async def test_a_worker_that_dies_while_one_retired_at_sigttou_drains_is_replaced(
    tmp_path: Path,
) -> None:
    """Found by review: at SIGTTOU the supervisor waited for the worker it retired to drain
    (here a ~30-s stream, within a 60-s grace): its loop stood still meanwhile, no health
    check, no replacement of a worker that died, a SIGTERM acted on only after. Now the
    retired worker drains among the others retiring, and a worker killed meanwhile is
    replaced while it still drains."""
    sim = SimConfig(models=[MODEL], max_tokens=600, itl_ms=50)  # ~30 s per stream
    async with (
        fleet(tmp_path, sim, 60, "--workers", "2") as f,
        aiohttp.ClientSession() as fresh,  # (no kept-alive connection to either worker)
    ):
        kept, retired = workers_in_order(f.gw.process.pid)
        tasks = await streams_on_each_worker(replace(f, http=fresh), 1)
        f.gw.process.send_signal(signal.SIGTTOU)
        await logged_line(tmp_path / "gw.log", "draining: ")  # the retired worker's
        os.kill(kept, signal.SIGKILL)
        async with asyncio.timeout(60):  # until a replacement runs, or the retired worker ends
            while not (alive_workers(f) - {kept, retired}) and process_running(retired):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        draining = process_running(retired)
        replacements = alive_workers(f) - {kept, retired}
        for task in tasks:  # (the drain ends with the streams)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert replacements, "the killed worker was never replaced"
    assert draining, "the killed worker was replaced only once the retired one had drained"
    said = logged_messages(tmp_path / "gw.log")
    assert f"worker {kept} was killed by SIGKILL: starting another" in said, said
