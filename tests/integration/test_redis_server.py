"""The private Redis that `llmaas up` starts: real server, PING, and nothing left after stop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.embedded.redis_server import RedisStartError, ping, start_redis
from gateway.netutil import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def redis_servers_on(port: int) -> list[str]:
    """Running redis-server processes serving `port`, as `ps` lists them."""
    ps = await asyncio.create_subprocess_exec(
        "ps", "-ww", "-eo", "stat=,args=", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await ps.communicate()
    return [
        line
        for line in out.decode().splitlines()
        if "redis-server" in line and f":{port}" in line and not line.lstrip().startswith("Z")
    ]


async def test_private_redis_starts_answers_and_stops() -> None:
    async with start_redis(None) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert url.startswith("redis://127.0.0.1:")
        assert await redis_servers_on(port)
        client = Redis.from_url(url)
        try:
            assert await client.ping()
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            await client.aclose()
    assert not await ping(url, 0.5)
    assert await redis_servers_on(port) == []


async def test_given_url_is_used_after_a_ping() -> None:
    async with start_redis(None) as private, start_redis(private) as url:
        assert url == private


async def test_unreachable_url_is_a_clear_error_without_the_password() -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisStartError, match="does not answer PING") as raised:
        async with start_redis(dead):
            pass
    assert "hunter2" not in str(raised.value)


async def test_private_redis_dies_with_a_parent_killed_by_sigkill() -> None:
    """A SIGKILLed parent runs no cleanup: the kernel's parent-death signal stops the server."""
    script = (
        "import asyncio\n"
        "from gateway.embedded.redis_server import start_redis\n"
        "async def main():\n"
        "    async with start_redis(None) as url:\n"
        "        print(url, flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    async with asyncio.timeout(30):
        url = (await parent.stdout.readline()).decode().strip()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert await redis_servers_on(port)
    assert await ping(url, 0.5)

    parent.kill()
    await parent.wait()
    async with asyncio.timeout(10):
        while await redis_servers_on(port):  # noqa: ASYNC110 (polling ps)
            await asyncio.sleep(0.1)
    assert not await ping(url, 0.5)


async def test_a_kept_redis_finds_its_data_again_on_the_next_start(tmp_path: Path) -> None:
    """`llmaas up`'s Redis: keys, files, jobs and usage outlive a restart (they used to be
    lost, and a fine-tuned model with them, its adapter left on disk)."""
    data = tmp_path / "redis"
    async with start_redis(None, keep_in=data) as url:
        client = Redis.from_url(url)
        await client.set("llmaas:test:kept", "yes")
        await client.aclose()
    async with start_redis(None, keep_in=data) as url:
        client = Redis.from_url(url)
        assert await client.get("llmaas:test:kept") == b"yes"
        await client.aclose()
    async with start_redis(None) as url:  # a private one without a place keeps nothing
        client = Redis.from_url(url)
        assert await client.get("llmaas:test:kept") is None
        await client.aclose()


async def test_a_supervised_redis_killed_comes_back_on_its_port_with_its_data(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`llmaas up`'s Redis: killed (the OOM killer), it used to stay gone, every request a 503
    until the whole stack was restarted. It is started again on the same URL, from its
    append-only file, so a client reconnects to what it wrote (synced every second)."""
    data = tmp_path / "redis"
    async with start_redis(None, keep_in=data, supervised=True) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = Redis.from_url(url)
        try:
            await client.set("llmaas:test:kept", "yes")
            await asyncio.sleep(1.5)  # past appendfsync everysec
            first = (await client.info("server"))["process_id"]
            killer = await asyncio.create_subprocess_exec("pkill", "-KILL", "-f", f":{port}")
            await killer.wait()
            async with asyncio.timeout(30):
                while not await ping(url, 0.5):  # noqa: ASYNC110 (polling the server)
                    await asyncio.sleep(0.1)
            assert await client.get("llmaas:test:kept") == b"yes"  # the same client, reconnected
            assert (await client.info("server"))["process_id"] != first
        finally:
            await client.aclose()
    assert await redis_servers_on(port) == []
    said = capfd.readouterr().err
    assert "[redis] exited with status -9" in said, said
    assert (data / "redis.previous.log").exists()
