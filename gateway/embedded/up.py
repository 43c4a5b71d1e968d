"""`llmaas up`: Redis, one vLLM engine with the bundled model, and the gateway, in one command.

Everything runs under one event loop; Ctrl-C (or SIGTERM) drains the gateway as `llmaas serve`
does (requests in flight get `shutdown_grace_s`, then are cut; a second Ctrl-C cuts at once),
then stops the engine's whole process group, then the private Redis, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from contextlib import AsyncExitStack, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from gateway.app import create_app
from gateway.auth.authenticate import DEV_PEPPER
from gateway.draining_server import DrainingServer, started
from gateway.embedded.banner import banner
from gateway.embedded.data_dir import DataDir, DataDirInUse, DataDirLayoutError, held
from gateway.embedded.dev_credentials import DevCredentials, admin_token, dev_key, keep, kept
from gateway.embedded.engine import EngineSpec, EngineStartError
from gateway.embedded.engine_venv import EngineInstallError
from gateway.embedded.model import ModelPrepareError
from gateway.embedded.paths import CHAT_MODEL_NAME, CHAT_TOOL_PARSER, EmbeddedPaths
from gateway.embedded.prepare import Prepared, prepare
from gateway.embedded.redis_server import RedisStartError, running_redis
from gateway.embedded.supervise import supervised_engine
from gateway.finetune.trainer import Trainer
from gateway.netutil import free_port
from gateway.redis_client import redis_client
from gateway.server import uvicorn_config
from gateway.settings import Settings
from gateway.settings_load import ConfigError, invalid_configuration, usable_settings

MAX_LORAS = 4  # adapters an engine batches together (more stay loaded and take turns)
HOST = "127.0.0.1"  # where `llmaas up` listens (the gateway's default host)


class PortInUse(RuntimeError):
    pass


# What stops `llmaas up` with one line and no traceback: each says what failed and what to do.
UP_ERRORS = (
    PortInUse,
    DataDirInUse,
    DataDirLayoutError,
    EngineInstallError,
    ModelPrepareError,
    EngineStartError,
    RedisStartError,
)


DEFAULT_PORT = 8080


def run_up(
    *,
    gateway_port: int | None,
    engine_port: int,
    home: Path | None,
    data_dir: Path | None = None,
    redis_port: int = 0,
) -> int:
    """`gateway_port`: None for LLMAAS_PORT, else DEFAULT_PORT. `data_dir`: what it keeps
    from one run to the next (Redis's data, files, engine logs; default: the home)."""
    paths = EmbeddedPaths.resolve(home)
    data = DataDir(data_dir.expanduser().resolve() if data_dir is not None else paths.home)
    for path, named in ((paths.home, "--home (or LLMAAS_HOME)"), (data.root, "--data-dir")):
        if (unusable := _unusable_directory(path, named)) is not None:
            print(f"llmaas up: error: {unusable}", file=sys.stderr)
            return 2
    try:  # LLMAAS_* settings, before minutes of preparing and starting anything
        # (the environment wins over what is given here: LLMAAS_PORT, unless --port was given)
        preflight = _preflight_settings(gateway_port or DEFAULT_PORT, data, paths)
    except (ConfigError, OSError) as exc:
        print(invalid_configuration("up", exc), file=sys.stderr)
        return 2
    gateway_port = preflight.port if gateway_port is None else gateway_port
    if (wrong := _wrong_ports(gateway_port, engine_port, redis_port)) is not None:
        print(f"llmaas up: error: {wrong}", file=sys.stderr)
        return 2
    try:
        # Before minutes of preparing and starting the engine, not after (uvicorn's bind).
        ensure_free(HOST, gateway_port, "--port")
        ensure_free(HOST, engine_port, "--engine-port")  # (0: a free one, later)
        # Its private Redis's data: one run at a time. With a shared Redis, runs share the
        # directory as they share the records of its files.
        shared_redis = os.environ.get("LLMAAS_REDIS_URL")
        if (
            refused := _redis_refusal(shared_redis, redis_port, preflight.redis_password)
        ) is not None:
            print(f"llmaas up: error: {refused}", file=sys.stderr)
            return 2
        ensure_free(HOST, redis_port, "--redis-port")
        data.check_layout()
        holder = f"the one serving http://{HOST}:{gateway_port}"
        with nullcontext() if shared_redis else held(data.root, holder):
            engine_port = engine_port or free_port()
            redis = (shared_redis, redis_port, preflight.redis_password)
            uvloop.run(_up(paths, data, gateway_port, engine_port, redis))
    except KeyboardInterrupt:
        print("\nstopped.", file=sys.stderr)
    except Terminated:
        print("\nstopped.", file=sys.stderr)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)  # its status, as after serving (uvicorn's re-raise)
    except UP_ERRORS as exc:
        print(f"llmaas up: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _redis_refusal(shared_redis: str | None, redis_port: int, password: str | None) -> str | None:
    """What makes the Redis settings given unusable by `up`, said before it starts anything."""
    if redis_port and shared_redis:
        return (
            "--redis-port is the private Redis's port, and LLMAAS_REDIS_URL names a shared one "
            "that is used instead: give one of them"
        )
    if password and not shared_redis:  # (it started everything, then failed on AUTH)
        return (
            "LLMAAS_REDIS_PASSWORD is set, but the Redis `up` starts has no password: unset "
            "it, or set LLMAAS_REDIS_URL to the Redis it is for"
        )
    return None


def _wrong_ports(gateway_port: int, engine_port: int, redis_port: int) -> str | None:
    """What is wrong with its ports, if anything (the gateway's as it will serve: --port, else
    LLMAAS_PORT, else 8080; the others 0 for a free one): LLMAAS_PORT=0, whose address the
    banner would print without a port, or two of the three the same, said as the options."""
    if gateway_port == 0:
        return "LLMAAS_PORT=0: give the port to serve on"
    ports = [("--port", gateway_port), ("--engine-port", engine_port)]
    ports.append(("--redis-port", redis_port))
    for i, (option, port) in enumerate(ports):
        for other, taken in ports[:i]:
            if port and port == taken:
                return f"{option} {port} is also its {other}: give each its own"
    return None


def _unusable_directory(path: Path, named: str) -> str | None:
    """Why `path` cannot be the directory `named` (made later if missing), if it cannot: a
    file in its place, or a directory that cannot be written, ended in a traceback, after
    minutes of preparing when it was the home."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{named} {path} cannot be a directory: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{named} {path} cannot be written ({existing}: permission denied)"
    return None


def _preflight_settings(gateway_port: int, data: DataDir, paths: EmbeddedPaths) -> Settings:
    """The settings `llmaas up` will run with, built with stand-ins for what it starts (Redis,
    the engine, the prepared model): a wrong LLMAAS_* variable fails here, said as `llmaas
    serve` says it, not minutes later in a traceback that quotes its value."""
    return up_settings(
        gateway_port=gateway_port,
        redis_url="redis://127.0.0.1:6379/0",
        admin_token="stand-in-admin-token-of-24",
        engine_url="http://127.0.0.1:8000",
        data=data,
        ready=Prepared(paths.home / "python", paths.home / "model", paths.home / "embedding"),
    )


def ensure_free(host: str, port: int, option: str) -> None:
    """Raise PortInUse when `port` cannot be listened on (bound as uvicorn binds it)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} is taken ({exc.strerror}): stop what listens there "
                f"(another `llmaas up`?) or choose another with {option}"
            ) from exc


async def _up(
    paths: EmbeddedPaths,
    data: DataDir,
    gateway_port: int,
    engine_port: int,
    redis: tuple[str | None, int, str | None],
) -> None:
    """`redis`: LLMAAS_REDIS_URL, used instead of a private Redis in `data`, the private
    one's port (0: a free one), and LLMAAS_REDIS_PASSWORD, used instead of the shared one's
    URL's by every connection to it (the gateway's did, the rest sent the URL's)."""
    shared_redis, redis_port, password = redis
    password = password if shared_redis else None  # (the private Redis has none)
    async with AsyncExitStack() as stack:
        sigterm = stack.enter_context(SigtermStops())  # the server's while it serves
        ready = await prepare(paths)
        redis_url = await stack.enter_async_context(
            running_redis(
                shared_redis,
                keep_in=data.redis,
                supervised=True,
                port=redis_port,
                password=password,
            )
        )
        spec = EngineSpec(
            python=ready.engine_python,
            model_dir=ready.chat_model,
            served_name=CHAT_MODEL_NAME,
            port=engine_port,
            log_path=data.engine_log(gateway_port),
            tool_parser=CHAT_TOOL_PARSER,
            max_loras=MAX_LORAS,  # fine-tuned models' adapters, loaded at runtime
        )
        engine_url = await stack.enter_async_context(supervised_engine(spec))  # restarted
        earlier = kept(data.credentials)
        kept_token = admin_token(earlier)
        settings = up_settings(
            gateway_port=gateway_port,
            redis_url=redis_url,
            admin_token=kept_token,
            engine_url=engine_url,
            data=data,
            ready=ready,
        )
        pepper = (settings.key_pepper or DEV_PEPPER).encode()
        key = await dev_key(redis_url, pepper, earlier, password)
        keep(data.credentials, DevCredentials(key, kept_token))  # shown again next run
        config = uvicorn_config(
            create_app(settings),
            settings,
            port=gateway_port,
            loop="none",
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )
        # As `llmaas serve`: Ctrl-C lets the requests in flight finish for at most the grace
        # (new ones get a 503), then cuts the rest; a second Ctrl-C stops at once.
        server = DrainingServer(config, settings.shutdown_grace_s)
        sigterm.hand_to_server()
        trainer_redis = redis_client(redis_url, 5.0, 4, password)
        stack.push_async_callback(trainer_redis.aclose)
        trainer = Trainer(settings, trainer_redis, "llmaas-up")
        training = asyncio.create_task(trainer.run())
        stack.push_async_callback(_stopped, trainer, training)
        async with started(server) as serving:  # DrainingServer froze the startup objects
            base = f"http://{settings.host}:{gateway_port}"
            token = settings.admin_token or ""
            shown = banner(
                base,
                redis_url=redis_url,
                spec=spec,
                key=key,
                admin_token=token,
                kept_token=kept_token,
                data=data,
            )
            print(shown, flush=True)
            await serving


def up_settings(
    *,
    gateway_port: int,
    redis_url: str,
    admin_token: str,
    engine_url: str,
    data: DataDir,
    ready: Prepared,
) -> Settings:
    """The gateway's settings under `llmaas up`; LLMAAS_* variables still win, field by field.
    Sections are given as dicts, which the environment's are merged into: given as models, a
    section was replaced whole by any variable of it (LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S=60
    turned fine-tuning off; LLMAAS_FILES__MAX_FILE_BYTES put the files outside the data
    directory)."""
    values: dict[str, Any] = {
        "port": gateway_port,
        "redis_url": redis_url,
        "dev_mode": True,
        "admin_token": admin_token,  # LLMAAS_ADMIN_TOKEN wins
        "models": [{"name": CHAT_MODEL_NAME, "engines": [engine_url]}],
        "files": {"dir": str(data.files)},
        # its CPU engine runs with LoRA, whose vLLM crashes on prompt logprobs
        "request_policy": {"prompt_logprobs": False},
        "fine_tuning": {
            "base_models": {CHAT_MODEL_NAME: str(ready.chat_model)},
            "trainer_python": str(ready.engine_python),
        },
    }
    return usable_settings(None, **values)  # (LLMAAS_* read, errors said as `serve` says them)


class Terminated(Exception):
    """A SIGTERM stopped `up`: what it had started was stopped first."""


class SigtermStops:
    """SIGTERM stops `up` as Ctrl-C does, from its start to its end: the task is cancelled,
    the step running (prepare's, process_group.group_stopped_if_cut) or what was started
    (Redis, the engine, the trainer: the exit stack) stopped with their children, and
    Terminated raised. SIGTERM's default action ended `up` alone: the step's children (pip
    under ensurepip under venv) went on installing, and an engine still starting, which
    vLLM's server does not stop for its parent's death signal, went on loading (3-4 GiB) after
    a `timeout` or `systemctl stop`; and after serving (uvicorn raises the signal it drained
    for again, with the handler it found) the trainer's job was left `running`, to be failed
    by the heartbeat sweep, not queued with its checkpoint (found by review).

    While the server serves, the signal is its own (the drain): this handler is then the plain
    one uvicorn finds, keeps and puts back, not the event loop's, which would hear the signal
    beside uvicorn's and cancel `up` midway through the drain."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.terminated = False

    def stop(self) -> None:
        self.terminated = True
        self.task.cancel()

    def __enter__(self) -> SigtermStops:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        return self

    def hand_to_server(self) -> None:
        self.loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._raised_again)

    def _raised_again(self, signum: int, frame: FrameType | None) -> None:
        self.loop.call_soon_threadsafe(self.stop)  # (a signal handler: not in the loop)

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.loop.remove_signal_handler(signal.SIGTERM)  # (the trainer's stop's, if set)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if isinstance(exc, asyncio.CancelledError) and self.terminated:
            raise Terminated from None


async def _stopped(trainer: Trainer, task: asyncio.Task[object]) -> None:
    """Stop the trainer: a job in training writes its checkpoint (for at most
    `stop_checkpoint_s`, said on stderr, as the gateway's log has stopped by now) and goes back
    to the queue. Ctrl-C again (or SIGTERM) cuts the checkpoint short: the job starts over."""
    job, grace_s = trainer.training, trainer.settings.fine_tuning.stop_checkpoint_s
    if job is not None and grace_s > 0:
        print(
            f"[trainer] stopping: {job.id} writes a checkpoint to go on from next time "
            f"({grace_s:g} s at most; Ctrl-C again cuts it short, and the job starts over)",
            file=sys.stderr,
            flush=True,
        )
    task.cancel()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # (not the interpreter's KeyboardInterrupt:
        loop.add_signal_handler(signum, task.cancel)  # the job would be left `running`)
    try:
        await asyncio.gather(task, return_exceptions=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
