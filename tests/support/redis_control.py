"""A Redis that tests can stop and start again on the same port (with its data, kept in an
append-only file), and a TCP proxy in front of Redis that can refuse connections, swallow
replies (the command runs, the caller never hears back: a "lost reply"), delay them (the
command runs at once, its caller hears back late: a slow Redis) or stall (every connection
open at that moment, and every one made while stalled, stays open with nothing passing either
way, for ever: a Redis whose pod or network path vanished without a FIN or RST)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from gateway.embedded.process_group import stop_process_group
from gateway.embedded.redis_server import ping, redis_config, redis_server_binary
from gateway.netutil import free_port

# swallow and delay: the replies to script calls (EVALSHA); delay holds them `delay_s`, and
# with `late=TRANSACTION` the replies to transactions (MULTI … EXEC) too.
Mode = Literal["pass", "refuse", "swallow", "delay", "stall"]
_SCRIPT = (b"EVALSHA",)
TRANSACTION = (*_SCRIPT, b"\r\nEXEC\r\n")  # (EXEC as sent: "$4\r\nEXEC\r\n")


class RestartableRedis:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        config = redis_config(self.port, self.workdir).replace(
            "appendonly no", "appendonly yes\nappendfsync always"
        )
        (self.workdir / "redis.conf").write_text(config)
        self.process = await asyncio.create_subprocess_exec(
            str(redis_server_binary()),
            str(self.workdir / "redis.conf"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(400):
            if await ping(self.url, 0.5):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 20 s")

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process_group(self.process, grace_s=5.0)
            self.process = None


@asynccontextmanager
async def restartable_redis(workdir: Path) -> AsyncIterator[RestartableRedis]:
    redis = RestartableRedis(workdir)
    await redis.start()
    try:
        yield redis
    finally:
        await redis.stop()


class RedisProxy:
    """127.0.0.1:<port> → the Redis at `target_port`, in one of five modes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.mode: Mode = "pass"
        self.swallowed = 0  # replies thrown away in "swallow" mode
        self.delay_s = 0.0  # how late replies come in "delay" mode
        self.late: tuple[bytes, ...] = _SCRIPT  # the commands whose replies "delay" holds
        self.delayed = 0  # replies held back in "delay" mode
        self.links: dict[asyncio.Task[None], _Link] = {}

    def set_mode(self, mode: Mode, delay_s: float = 0.0, late: tuple[bytes, ...] = _SCRIPT) -> None:
        """Change the mode; open connections are cut so every client reconnects into it, except
        stalled ones: into "stall", they stay open and silent, and out of it, they stay so.
        `late`: in "delay" mode, the commands whose replies come late (TRANSACTION: a MULTI's)."""
        self.mode = mode
        self.delay_s = delay_s
        self.late = late
        for task, link in list(self.links.items()):
            if mode == "stall":
                link.frozen = True
            elif not link.frozen:
                task.cancel()

    def close(self) -> None:
        """Cut every connection, stalled ones included, and refuse new ones."""
        self.set_mode("refuse")
        for task in list(self.links):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        link = _Link(self.mode, self.late if self.mode == "delay" else _SCRIPT)
        self.links[task] = link
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(
                    link.requests(reader, up_writer), self._replies(up_reader, writer, link)
                )
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.links.pop(task, None)
            writer.close()

    async def _replies(
        self, up: asyncio.StreamReader, client: asyncio.StreamWriter, link: _Link
    ) -> None:
        while data := await up.read(65536):
            if link.frozen:
                await link.forever()
            if link.script_sent and link.mode == "delay":
                link.script_sent = False
                self.delayed += 1
                await asyncio.sleep(self.delay_s)  # the script ran; its caller hears back late
            elif link.script_sent:
                self.swallowed += 1
                client.close()  # the script ran; its caller sees a dropped connection
                return
            client.write(data)
            await client.drain()


class _Link:
    """One client connection; in swallow or delay mode it notes when a script call goes by."""

    def __init__(self, mode: Mode, watched: tuple[bytes, ...]) -> None:
        self.mode = mode
        self.watched = watched  # the commands (as sent, in RESP) whose replies are held
        self.script_sent = False
        self.frozen = mode == "stall"  # nothing passes, the connection stays open

    async def forever(self) -> None:
        await asyncio.Event().wait()  # until the connection is cut (cancelled)

    async def requests(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen:
                await self.forever()
            if self.mode in ("swallow", "delay") and any(w in data.upper() for w in self.watched):
                self.script_sent = True  # before the script can answer
            sink.write(data)
            await sink.drain()


@asynccontextmanager
async def redis_proxy(target_port: int) -> AsyncIterator[RedisProxy]:
    proxy = RedisProxy(target_port)
    server = await asyncio.start_server(proxy._serve, "127.0.0.1", proxy.port)
    try:
        yield proxy
    finally:
        server.close()
        proxy.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
