"""`llmaas serve` as a real process: several workers, aggregated metrics, clear config errors."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim_process
from tests.support.gateways import gateway_process, serve_command

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_two_workers_serve_and_metrics_add_up(tmp_path: Path) -> None:
    async with running_sim_process(SimConfig(models=["m"])) as sim:
        config = tmp_path / "gw.yaml"
        config.write_text(
            "access_log: false\nadmin_token: serve-cli-admin-token\nauth: {required: false}\n"
            f"models:\n  - name: m\n    engines: [{sim}]\n"
            f"metering: {{spill_dir: {tmp_path / 'spill'}}}\n"  # never the one under the home
        )
        async with gateway_process(config, "--workers", "2") as served:
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
            assert await asyncio.wait_for(served.process.wait(), 30) == 0
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


async def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("dev_mode: true\nmodels:\n  - name: m\n    engines: [localhost:8000]\n")
    code, err = await serve_fails(config)
    assert code == 2
    assert b"models.0.engines" in err
    assert b"http://" in err


async def test_refuses_to_start_without_secrets_outside_dev_mode(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("models: []\n")
    code, err = await serve_fails(config, env={"PATH": "/usr/bin:/bin"})
    assert code == 2
    for name in (b"LLMAAS_ADMIN_TOKEN", b"LLMAAS_KEY_PEPPER", b"LLMAAS_REDIS_URL"):
        assert name in err
