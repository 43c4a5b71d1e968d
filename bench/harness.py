"""Shared benchmark plumbing: start servers as subprocesses, drive load, summarise latencies."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from redis.asyncio import Redis

from gateway.netutil import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU the process has used so far: unlike latency, barely moved by other processes
        competing for the same cores."""
        return _cpu_seconds(self.pid)

    def syscalls(self) -> tuple[int, int]:
        """Read and write system calls (socket reads and writes among them) so far (Linux
        /proc/PID/io): the count behind much of a proxy's CPU, and exact where CPU is noisy."""
        fields = dict(
            line.split(": ", 1) for line in Path(f"/proc/{self.pid}/io").read_text().splitlines()
        )
        return int(fields["syscr"]), int(fields["syscw"])

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS, KiB): what a leak grows."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def open_fds(self) -> int:
        """File descriptors open now (sockets among them): what a connection leak grows."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> dict[int, str]:
        """Each descriptor open now and what it is: a path, a pipe, or a TCP socket's two ends
        and state, so that a descriptor more at the end of a run names its cause (a
        connection to Redis, to an engine, from a client)."""
        sockets = tcp_sockets(self.pid)
        targets: dict[int, str] = {}
        folder = Path(f"/proc/{self.pid}/fd")
        for entry in folder.iterdir():
            try:
                target = os.readlink(entry)
            except FileNotFoundError:
                continue  # closed between the listing and the read
            inode = target.removeprefix("socket:[").removesuffix("]")
            targets[int(entry.name)] = sockets.get(inode, target)
        return targets


TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def tcp_sockets(pid: int) -> dict[str, str]:
    """The TCP sockets of the process's network namespace by inode: `tcp LOCAL -> REMOTE
    STATE` (Linux /proc/PID/net/tcp and tcp6)."""
    sockets: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            named = TCP_STATES.get(state, f"state {state}")
            sockets[inode] = f"tcp {_address(local)} -> {_address(remote)} {named}"
    return sockets


def _address(hex_address: str) -> str:
    """`0100007F:1F90` (the kernel's little-endian words) as `127.0.0.1:8080`."""
    host, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{shown}:{int(port, 16)}"


@asynccontextmanager
async def process(
    args: list[str], health_url: str, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    """Run `python -m <args>` until the block ends; wait until `health_url` answers 200.
    Yields the process id."""
    async with command([sys.executable, "-m", *args], health_url, env) as pid:
        yield pid


@asynccontextmanager
async def simulator(model: str, *options: str) -> AsyncIterator[str]:
    """A simulator serving `model`; `options` are more `gateway.sim.server` flags (--itl-ms 2)."""
    port = free_port()
    args = ["gateway.sim.server", "--model", model, "--port", str(port), *options]
    async with process(args, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def gateway(
    config_text: str, tmp: Path, extra_args: Sequence[str] = ()
) -> AsyncIterator[Server]:
    port = free_port()
    config = tmp / f"gateway-{port}.yaml"
    config.write_text(config_text)
    args = ["gateway", "serve", "--config", str(config), "--port", str(port), *extra_args]
    async with process(args, f"http://127.0.0.1:{port}/healthz") as pid:
        yield Server(f"http://127.0.0.1:{port}", pid)


Call = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def drive(session: aiohttp.ClientSession, call: Call, total: int, concurrency: int) -> Result:
    """Send `total` calls with `concurrency` in flight; time each one."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call(session)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(total, time.perf_counter() - started, latencies)


@dataclass(frozen=True, slots=True)
class Streamed:
    """One streamed chat completion as the client saw it."""

    status: int
    ttft_ms: float | None  # to the first frame with content
    content_frames: int
    completion_tokens: int | None  # from the last frame carrying usage
    done: bool  # ended with `data: [DONE]`
    error: str | None  # a non-200 body or an error frame

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    hang_up_after: int | None = None,
) -> Streamed:
    """POST a streaming chat completion and read its frames; with `hang_up_after`, close the
    connection after that many content frames (a client that goes away mid-stream)."""
    started = time.perf_counter()
    ttft: float | None = None
    frames, tokens, done, error = 0, None, False, None
    async with session.post(url, data=payload, headers=headers) as resp:
        if resp.status != 200:
            return Streamed(resp.status, None, 0, None, False, (await resp.text())[:200])
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            frame = orjson.loads(data)
            if "error" in frame:
                error = str(frame["error"])[:200]
            usage = frame.get("usage")
            if usage:
                tokens = usage.get("completion_tokens", tokens)
            choices = frame.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                frames += 1
                if ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
                if hang_up_after is not None and frames >= hang_up_after:
                    resp.close()
                    break
    return Streamed(resp.status, ttft, frames, tokens, done, error)


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (nearest rank) of `values`, or nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def simulator_server(model: str) -> AsyncIterator[Server]:
    """A simulator with its process id, for benchmarks that count its CPU too."""
    port = free_port()
    args = ["gateway.sim.server", "--model", model, "--port", str(port)]
    async with process(args, f"http://127.0.0.1:{port}/health") as pid:
        yield Server(f"http://127.0.0.1:{port}", pid)


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (uvicorn's workers, LiteLLM's forks), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except FileNotFoundError:  # the task ended while we looked
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live descendants."""
    return sum(_cpu_seconds(one) for one in process_tree(pid))


async def redis_pid(url: str) -> int:
    """The process id of the Redis server at `url` (its INFO says), to read its CPU time."""
    client = Redis.from_url(url)
    try:
        return int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()


async def redis_cpu_seconds(url: str) -> float:
    """User + system CPU the Redis server at `url` has used, from its INFO (Redis reads it with
    getrusage: microseconds, where /proc counts 10 ms clock ticks, more than a short run's
    worth of Redis work)."""
    client = Redis.from_url(url)
    try:
        cpu = await client.info("cpu")
    finally:
        await client.aclose()
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def tree_peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) summed over `pid` and its live descendants."""
    return sum(_status_kib(one, "VmHWM:") for one in process_tree(pid)) / 1024


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of all of `pid`'s threads, ended ones included, to the nanosecond: read
    from the process's CPU clock (Linux's clock id for it is `~pid << 3 | 2`), where /proc's
    utime and stime count 10 ms clock ticks, so a short pass's worth of work (a few ms) could
    read as none. A process that has ended used 0 more."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:  # gone
        return 0.0


def _status_kib(pid: int, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field)), 0)


@asynccontextmanager
async def command(
    argv: list[str],
    health_url: str,
    env: dict[str, str] | None = None,
    *,
    timeout_s: float = 30,
    stderr: Path | None = None,
) -> AsyncIterator[int]:
    """Run any executable (a peer's own venv) until the block ends; wait until `health_url`
    answers 200. Yields the process id; `stderr` keeps its error output for a failed start."""
    err = os.open(stderr or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**os.environ, **(env or {})},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
        )
        try:
            await _ready_or_exited(proc, health_url, timeout_s)
            yield proc.pid
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    finally:
        os.close(err)


async def _ready_or_exited(proc: asyncio.subprocess.Process, url: str, timeout_s: float) -> None:
    """Wait for `url` to answer 200, but give up at once if the process exits first."""
    ready = asyncio.ensure_future(wait_http_ok(url, timeout_s=timeout_s))
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        raise RuntimeError(f"the process exited ({proc.returncode}) before {url} answered")
    exited.cancel()
    ready.result()


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait since boot (/proc/stat):
    less this benchmark's own process tree, what others on a shared box took from it."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
