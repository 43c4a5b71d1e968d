"""A vLLM engine as a child process: started in its own process group, waited for with visible
progress, and stopped as a whole group (vLLM forks an EngineCore and a resource tracker)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gateway.embedded.model import OFFLINE
from gateway.embedded.process_group import stop_process_group, terminated_with_parent
from gateway.netutil import wait_http_ok

ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU (~23k tokens for SmolLM2)
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    # The Responses API's `store` (its default) and `previous_response_id` need it; stored
    # responses stay in the engine's memory (the gateway routes their follow-ups back to it).
    "VLLM_ENABLE_RESPONSES_API_STORE": "1",
    # Media URLs: the gateway checks each host (gateway/api/media.py); a redirect would not be.
    "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
    **OFFLINE,
}
READY_TIMEOUT_S = 600.0
# What the gateway polls on every engine, a few times a second in all: left out of vLLM's access
# log, which they filled (~1.6 lines a second, 8 in 10 of its lines: a crash's last lines shown
# by `llmaas up` were polls). The chart's engines leave out the same (engines[].logProbes).
PROBED_PATHS = "/health,/metrics,/v1/models"
REPORT_EVERY_S = 5.0  # when stderr is not a terminal; a terminal gets one refreshing line


class EngineStartError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class EngineSpec:
    python: Path
    model_dir: Path
    served_name: str
    port: int
    log_path: Path
    pooling: bool = False  # embedding models
    # vLLM's tool-call parser: `tools` with tool_choice "auto", "required" or a named function
    tool_parser: str | None = None
    # More vLLM server options, appended as given (bench/routing.py: --engine-args).
    extra_args: tuple[str, ...] = ()
    # LoRA adapters loaded at runtime (fine-tuned models, gateway/finetune/engine_adapters.py):
    # 0 keeps LoRA off; N > 0 lets N adapters of rank <= max_lora_rank share a batch.
    max_loras: int = 0
    max_lora_rank: int = 8

    @property
    def lora(self) -> bool:
        return self.max_loras > 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        argv = [str(self.python), "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", str(self.model_dir), "--served-model-name", self.served_name]
        argv += ["--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port)]
        argv += ["--scheduling-policy", "priority"]  # tenants' priorities (gateway/api/policy.py)
        # Without it vLLM reports no prompt_tokens_details: cached_tokens metered 0, always
        argv += ["--enable-prompt-tokens-details"]
        argv += ["--disable-access-log-for-endpoints", PROBED_PATHS]
        if self.lora:
            argv += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            argv += ["--max-loras", str(self.max_loras)]
        if self.tool_parser is not None:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
        if self.pooling:
            argv += ["--runner", "pooling"]
        return [*argv, *self.extra_args]


# Without it vLLM has no /v1/load_lora_adapter: adapters could only be named at startup.
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def engine_env(parent: Mapping[str, str], *, lora: bool = False) -> dict[str, str]:
    """The parent's environment without the gateway's own settings (secrets among them)."""
    kept = {name: value for name, value in parent.items() if not name.startswith("LLMAAS_")}
    return {**kept, **ENGINE_ENV, **(RUNTIME_LORA_ENV if lora else {})}


@dataclass(frozen=True, slots=True)
class EngineProcess:
    """A running engine; its pid is also its process group id."""

    spec: EngineSpec
    process: asyncio.subprocess.Process = field(compare=False, repr=False)

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pgid(self) -> int:
        return self.process.pid


def start_engine(
    engine_python: Path,
    model_dir: Path,
    served_name: str,
    port: int,
    *,
    pooling: bool = False,
    log_path: Path,
    timeout_s: float = READY_TIMEOUT_S,
) -> AbstractAsyncContextManager[EngineProcess]:
    """Start an engine, wait until /health answers, and stop its whole group on exit."""
    spec = EngineSpec(engine_python, model_dir, served_name, port, log_path, pooling)
    return launched(spec, timeout_s=timeout_s)


@asynccontextmanager
async def running_engine(
    spec: EngineSpec, *, timeout_s: float = READY_TIMEOUT_S
) -> AsyncIterator[str]:
    """Like `start_engine`, yielding only the base URL (what the gateway's routes need)."""
    async with launched(spec, timeout_s=timeout_s) as engine:
        yield engine.url


@asynccontextmanager
async def launched(spec: EngineSpec, *, timeout_s: float) -> AsyncIterator[EngineProcess]:
    log = await asyncio.to_thread(_open_log, spec.log_path)
    with log:
        proc = await asyncio.create_subprocess_exec(
            *spec.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=engine_env(os.environ, lora=spec.lora),
            start_new_session=True,
            preexec_fn=terminated_with_parent(),
        )
    try:
        await _wait_ready(spec, proc, timeout_s)
        yield EngineProcess(spec, proc)
    finally:
        await stop_process_group(proc)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


async def _wait_ready(spec: EngineSpec, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Return once /health answers 200; fail fast, with the log's tail, if the engine exits."""
    started = time.monotonic()
    say(f"[engine] starting {spec.served_name} on {spec.url} (log: {spec.log_path})")
    health_url = f"{spec.url}/health"
    health = asyncio.create_task(wait_http_ok(health_url, timeout_s=timeout_s, interval_s=0.5))
    exited = asyncio.create_task(proc.wait())
    progress = asyncio.create_task(_show_progress(spec, started))
    try:
        await asyncio.wait((health, exited), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (health, exited, progress):
            task.cancel()
        await asyncio.gather(health, exited, progress, return_exceptions=True)
    elapsed = time.monotonic() - started
    if health.done() and not health.cancelled() and health.exception() is None:
        say(f"[engine] {spec.served_name} ready on {spec.url} after {elapsed:.0f}s")
        return
    tail = await asyncio.to_thread(log_tail, spec.log_path, 25)
    if exited.done() and not exited.cancelled():
        why = f"exited with status {exited.result()} after {elapsed:.0f}s"
    else:
        why = f"did not answer {health_url} within {timeout_s:.0f}s"
    raise EngineStartError(
        f"engine {spec.served_name} {why}; last lines of {spec.log_path}:\n{tail}"
    )


async def _show_progress(spec: EngineSpec, started: float) -> None:
    """What the engine is doing while we wait: one refreshing line on a terminal, else a line
    every few seconds (CI logs)."""
    tty = sys.stderr.isatty()
    try:
        while True:
            await asyncio.sleep(0.5 if tty else REPORT_EVERY_S)
            last = await asyncio.to_thread(log_tail, spec.log_path, 1)
            elapsed = time.monotonic() - started
            line = f"[engine] waiting for {spec.served_name} ({elapsed:.0f}s): {last}"
            if tty:
                width = shutil.get_terminal_size().columns - 1
                sys.stderr.write(f"\r\x1b[K{line[:width]}")
                sys.stderr.flush()
            else:
                say(line[:200])
    finally:
        if tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file (read from its last 16 KiB), or "" if unreadable."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
