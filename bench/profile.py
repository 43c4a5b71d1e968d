"""Where the gateway's CPU goes: py-spy samples the gateway (everything on) under steady load.

Starts the simulator, Redis and the gateway with auth + limits + metering (bench.auth_modes
"limits"), drives non-streaming or streaming chat completions at a fixed concurrency, and
samples the gateway with py-spy (which skips idle samples: a thread waiting in epoll is not
counted). Prints the share of samples by package (self time: where the CPU actually is) and
the functions with the most self time; `--save FILE` keeps py-spy's collapsed stacks (for a
flame graph, or to look a stack up).

    .venv/bin/python -m bench.profile [--seconds 20] [--concurrency 16] [--stream] [--auth limits]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.auth_modes import auth_mode
from bench.harness import drive, gateway, simulator
from bench.overhead import MODEL, chat_call, config_for

# Packages by where their files live, most specific first; the rest is "other".
RATE_HZ = 500  # py-spy samples per second: each busy sample stands for 2 ms of the thread's time
_PACKAGES = (
    ("gateway", re.compile(r"[(/]gateway/")),
    ("fastapi", re.compile(r"[(/]fastapi/")),
    ("starlette", re.compile(r"[(/]starlette/")),
    ("uvicorn", re.compile(r"[(/]uvicorn/")),
    ("aiohttp", re.compile(r"[(/]aiohttp/")),
    ("redis-py", re.compile(r"[(/]redis/")),
    ("prometheus", re.compile(r"[(/]prometheus_client/")),
    ("pydantic", re.compile(r"[(/]pydantic")),
    ("asyncio", re.compile(r"[(/]asyncio/|uvloop")),
    ("logging", re.compile(r"[(/]logging/")),
)


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    by_package: list[tuple[str, int]]
    by_function: list[tuple[str, int]]
    requests: int
    rps: float


def package_of(frame: str) -> str:
    for name, pattern in _PACKAGES:
        if pattern.search(frame):
            return name
    return "other"


def summarise(collapsed: str, requests: int, rps: float, top: int = 25) -> Profile:
    """Self samples per package and per function from py-spy's collapsed stacks."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        packages[package_of(leaf)] += count
        functions[leaf] += count
    return Profile(total, packages.most_common(), functions.most_common(top), requests, rps)


async def profile(
    seconds: float, concurrency: int, stream: bool, auth_name: str, save: Path | None = None
) -> Profile:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        async with (
            auth_mode(auth_name, tmp) as auth,
            simulator(MODEL) as sim,
            gateway(config_for(sim, False, auth), tmp) as gw,
        ):
            credentials = await auth.headers(gw.url)
            call = chat_call(gw.url, stream, credentials)
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                await drive(session, call, 500, concurrency)  # warm up
                out = tmp / "stacks.txt"
                recorder = await asyncio.create_subprocess_exec(
                    spy, "record", "--pid", str(gw.pid), "--duration", str(int(seconds)),
                    "--rate", str(RATE_HZ), "--format", "raw", "--output", str(out),
                    "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                done = 0
                started = asyncio.get_running_loop().time()
                while recorder.returncode is None:
                    await drive(session, call, concurrency * 50, concurrency)
                    done += concurrency * 50
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(recorder.wait(), 0.001)
                elapsed = asyncio.get_running_loop().time() - started
            if save is not None:
                shutil.copyfile(out, save)
            return summarise(out.read_text(), done, done / elapsed)


def show(p: Profile) -> None:
    """Shares of the busy samples, and what they come to per request (µs), comparable between
    runs and commits: a sample is 1/RATE_HZ s of the gateway's busy time."""
    busy = max(1, p.samples)
    per_request = 1e6 / RATE_HZ / max(1, p.requests)
    print(f"{p.requests} requests at {p.rps:.0f}/s; {p.samples} busy samples")
    print(f"busy time per request: {p.samples * per_request:.0f} µs")
    print(f"\n{'package':<12} {'share':>7} {'µs/request':>11}")
    for name, count in p.by_package:
        print(f"{name:<12} {count / busy:>7.1%} {count * per_request:>11.1f}")
    print(f"\n{'self %':>7} {'µs/req':>7}  function (file:line)")
    for frame, count in p.by_function:
        print(f"{count / busy:>7.1%} {count * per_request:>7.1f}  {frame[:130]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--auth", choices=["none", "key", "limits"], default="limits")
    parser.add_argument("--save", type=Path, help="keep py-spy's collapsed stacks in this file")
    args = parser.parse_args()
    result = asyncio.run(profile(args.seconds, args.concurrency, args.stream, args.auth, args.save))
    show(result)


if __name__ == "__main__":
    main()
