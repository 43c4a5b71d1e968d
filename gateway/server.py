"""Running the gateway under uvicorn (uvloop + httptools), with one or many worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from gateway.api.drain import Drain
from gateway.app import create_app
from gateway.embedded.process_group import terminate_with_parent
from gateway.http_protocol import GatewayHttpProtocol
from gateway.logs import configure_logging_single_threaded
from gateway.metrics import forget_earlier_runs, forget_process
from gateway.settings import Settings
from gateway.settings_load import (
    ConfigError,
    invalid_configuration,
    load_settings,
    usable_settings,
)

CONFIG_ENV = "LLMAAS_CONFIG_FILE"
GRACE_ENV = "LLMAAS_SHUTDOWN_GRACE_S"
# Past the grace, how long the requests cut then have to send their answers' ends before
# uvicorn cancels them (an answer's end is one write; a client that takes nothing is cut).
ANSWER_END_S = 2.0
# What the supervisor of `--workers N` stops its workers with (DrainingServer): not a signal
# a terminal or systemd sends the whole process group.
RELAY = signal.SIGUSR1
# What it retires a worker with at a reload (SIGHUP): RELAY's drain, and the worker stops
# accepting connections at once, which the workers that stay (sharing the socket) take.
RETIRE = signal.SIGUSR2
# What the supervisor of `--workers N` acts on (a reload, a worker more or fewer): the same
# signal to the whole process group (a terminal's hangup) must not stop its workers, which
# SIGHUP's default action did, and SIGTTIN's and SIGTTOU's suspend.
SUPERVISOR_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU})
# How long the supervisor of `--workers N` waits for a worker's answer to its health check,
# and for a new worker to serve (at SIGHUP): uvicorn's 5 s killed workers still importing on
# a busy or CPU-limited machine (8 workers on one core took 12 s) as "stopped answering".
WORKER_ANSWER_S = 30
# Each health check waits this long for its answer; a worker is killed only once silent for
# WORKER_ANSWER_S (one 30-s check held the supervisor's loop, and a SIGTERM, that long).
PING_S = 1.0
# What stops the gateway; a second one during a drain cuts what still runs.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
_log = logging.getLogger("llmaas.server")


def app_from_env() -> FastAPI:
    """The uvicorn factory each worker process calls: settings from the file named in the env."""
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_settings(Path(path) if path else None))


def uvicorn_config(
    target: str | FastAPI, settings: Settings, *, port: int, loop: str, **more: Any
) -> uvicorn.Config:
    """How uvicorn serves the gateway wherever it runs (`llmaas serve`, `llmaas up`): our HTTP
    protocol (a response's head and body in one write), idle connections kept `keep_alive_s`
    (a float, which uvicorn's call_later takes; its annotation says int), no access log of its
    own, and the client is the TCP peer: X-Forwarded-For is not trusted, not even from
    localhost (the auth-failure throttle counts by the peer). `more`: further options."""
    return uvicorn.Config(
        target,
        host=settings.host,
        port=port,
        loop=loop,
        http=GatewayHttpProtocol,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type, unused-ignore]
        log_level="warning",
        log_config=None,  # its loggers write our JSON lines (gateway/logs.py), not plain text
        access_log=False,
        proxy_headers=False,
        **more,
    )


class PinnedConfig:
    """The config file the workers of `--workers N` read: a private copy of the operator's,
    taken when it was last found usable (at the start, then at each SIGHUP). Workers read the
    operator's own file, so a replacement of a crashed one took any edit made since, and a
    wrong one made it exit with a traceback, in a loop, each replacement of the last. The copy
    is in a directory only this user can read (the file may hold a Redis password); relative
    paths in it resolve as before: against the working directory, which workers share."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.dir = Path(tempfile.mkdtemp(prefix="llmaas-config-"))
        self.path = self.dir / "gateway.yaml"

    def take(self) -> None:
        """Copy the operator's file and check the copy (usable_settings), then pin it. Raises
        ConfigError (naming the operator's file, not the copy) or OSError; pins nothing then."""
        staged = self.dir / "next.yaml"
        shutil.copyfile(self.source, staged)
        try:
            usable_settings(staged)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(staged), str(self.source))) from None
        staged.replace(self.path)


def run_server(settings: Settings, config_path: Path | None) -> None:
    """Serve until SIGINT/SIGTERM, then drain (DrainingServer). Several workers read the
    config file in each process, the copy the supervisor pinned (PinnedConfig). Raises
    ConfigError if the file changed for the worse since `settings` were read from it."""
    # Until the server's own handler (a log line, or the supervisor's reload): SIGHUP's default
    # action killed a gateway still starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    forget_earlier_runs()  # (in an operator's metrics directory)
    target: str | FastAPI = create_app(settings)
    made: Path | None = None  # the metrics directory made here (removed at the end)
    pinned: PinnedConfig | None = None
    if settings.workers > 1:
        # (without --config the workers read no file: not one the supervisor never checked)
        os.environ.pop(CONFIG_ENV, None)
        if config_path is not None:
            pinned = PinnedConfig(config_path)
            try:
                pinned.take()
            except BaseException as exc:
                shutil.rmtree(pinned.dir, ignore_errors=True)
                if isinstance(exc, OSError):  # (gone since it was read: said as then)
                    raise ConfigError(str(exc)) from None
                raise
            os.environ[CONFIG_ENV] = str(pinned.path)
        # Metrics from every worker are aggregated through files in this directory.
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            made = Path(tempfile.mkdtemp(prefix="llmaas-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(made)
        target = "gateway.server:app_from_env"
    config = uvicorn_config(
        target,
        settings,
        port=settings.port,
        loop="uvloop",
        factory=settings.workers > 1,
        workers=settings.workers,
        # DrainingServer sets this to what is left of the grace when it exits; a float, which
        # uvicorn's asyncio.wait_for takes (its annotation says int). A worker replaced after a
        # crash or at SIGHUP is a DrainingServer too (DrainingWorkers).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_worker_healthcheck=WORKER_ANSWER_S,
    )
    if settings.workers > 1:
        # Each worker drains the same way; the grace reaches them through the environment
        # (the same variable the settings read, so a worker's own settings agree).
        os.environ[GRACE_ENV] = repr(settings.shutdown_grace_s)
        # JSON lines from here on: a port already taken is said as the one worker says it
        # (the supervisor set its logging up only once the socket was bound)
        configure_logging_single_threaded(settings.log_level)
        try:
            sockets = [config.bind_socket()]  # (exits if the port is taken)
        except BaseException:
            for directory in (made, None if pinned is None else pinned.dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
            raise
        DrainingWorkers(config, sockets, settings.log_level, made, pinned).run()
    else:
        DrainingServer(config, settings.shutdown_grace_s).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, except that the first SIGTERM/SIGINT starts a drain, not an exit.

    The app's Drain (found in the lifespan state) flips at once: /readyz says "draining" and new
    requests get a 503, while the listener and kept-alive connections stay open so that clients
    are told rather than reset. The exit begins when the requests let in before are done or
    `grace_s` (fractions included) has passed since the signal. Then the proxied requests still
    in flight are cut (Drain.cut): each ends its answer (a 503, or its stream's error frame and
    `[DONE]`), and uvicorn's own shutdown gives them ANSWER_END_S before it cancels whatever
    still runs, and runs the lifespan's shutdown (usage flush). A second signal ends the grace
    at once: what still runs is cut then, as at the grace's end.

    A worker of `--workers N` (`supervised`) is driven by its supervisor alone, with SIGUSR1
    (RELAY): a terminal's Ctrl-C reaches every process of its group, and so does systemd's
    SIGTERM, and the supervisor then relays the signal, which the worker took for a second one
    (its streams were cut at once, without the grace). So it ignores SIGINT and SIGTERM; the
    supervisor's first SIGUSR1 starts the drain, a second (a second signal to the supervisor)
    ends it; the kernel sends SIGUSR1 too when the supervisor dies. It still ends as by
    SIGTERM (exit status 143), as it did.
    """

    def __init__(self, config: uvicorn.Config, grace_s: float, *, supervised: bool = False):
        super().__init__(config)
        self.grace_s = grace_s
        self.supervised = supervised
        self.deadline: float | None = None
        self.retired = False  # RETIRE: its listener is to close (on_tick)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_objects()
        for server in self.servers:  # where it listens (`--port 0` picks a free port)
            for bound in server.sockets:
                host, port = bound.getsockname()[:2]
                _log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, a single process's SIGHUP (`hangup`), and a supervised worker's RELAY.
        (A supervised worker ignores SUPERVISOR_SIGNALS from its start: _DrainingProcess.)"""
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():  # (it captures nothing there either)
                yield
            return
        own = (
            {RELAY: self.handle_exit, RETIRE: self.retire}
            if self.supervised
            else {signal.SIGHUP: self.hangup}
        )
        previous = {sig: signal.signal(sig, handler) for sig, handler in own.items()}
        try:
            with super().capture_signals():
                yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def hangup(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP to a single process: its default action killed the gateway at once (streams
        cut unbilled, no flush), at a terminal's hangup or a `systemctl reload`. Only the
        supervisor of `--workers N` reloads (new workers read the file again); this process
        could not rebuild itself, so it goes on as it is and says so."""
        _log.warning(
            "SIGHUP ignored: a reload needs --workers N (N > 1); SIGTERM stops the gateway"
        )

    def retire(self, sig: int, frame: FrameType | None) -> None:
        """RETIRE, at a reload: drain as at RELAY, and stop accepting connections on the socket
        it shares with the workers that stay (once, at the next tick: not in a signal
        handler). It accepted new ones while it drained, and answered them 503
        `gateway_draining` (and /readyz "draining") while its replacement served."""
        self.retired = True
        self.handle_exit(RELAY, frame)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.supervised:
            if sig != RELAY:  # the group's SIGINT or SIGTERM: the supervisor relays it
                return
            sig = signal.SIGTERM  # (re-raised after shutdown: the exit status says SIGTERM)
        drain = self.drain()
        if self.deadline is None and drain is not None:
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            self.deadline = time.monotonic() + self.grace_s
            drain.begin()
            _log.warning(
                "draining: %d requests in flight, cut after %gs; a second signal stops now",
                drain.in_flight,
                self.grace_s,
            )
            return
        if self.deadline is not None and not self.should_exit:
            self.deadline = time.monotonic()  # the grace ends now: the next tick cuts the rest
            return
        if self.should_exit and drain is not None:  # stopping already: no more waiting on Redis
            asyncio.get_running_loop().call_soon_threadsafe(drain.hurry)  # (a signal handler)
        self._exit_with_what_is_left()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.retired and self.servers:
            for server in self.servers:  # (uvicorn's shutdown closes them again: harmless)
                server.close()
            self.servers = []
        if self.deadline is not None and not self.should_exit:
            drain = self.drain()
            if drain is None or drain.idle:
                self._exit_with_what_is_left()
                self.should_exit = True
            elif time.monotonic() >= self.deadline:
                cut = drain.cut()
                _log.warning("grace over: %d requests in flight, %d cut", drain.in_flight, cut)
                # uvicorn hands this to asyncio.wait_for, which takes a float
                self.config.timeout_graceful_shutdown = ANSWER_END_S  # type: ignore[assignment, unused-ignore]
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's; after a signal once stopping (a second Ctrl-C: uvicorn's force exit),
        the app's shutdown still runs, in a hurry: uvicorn skips it then, and the usage records
        on their way to Redis were lost with no spill and no line."""
        await super().shutdown(sockets)
        lifespan = getattr(self, "lifespan", None)
        if self.force_exit and lifespan is not None and not lifespan.shutdown_event.is_set():
            drain = self.drain()  # (skipped by uvicorn: run here, in a hurry)
            if drain is not None:
                drain.hurry()
            await lifespan.shutdown()

    def drain(self) -> Drain | None:
        lifespan = getattr(self, "lifespan", None)  # set once serving has begun
        found = lifespan.state.get("drain") if lifespan is not None else None
        return found if isinstance(found, Drain) else None

    def _exit_with_what_is_left(self) -> None:
        left = self.grace_s if self.deadline is None else self.deadline - time.monotonic()
        # uvicorn hands this to asyncio.wait_for, which takes a float (its annotation says int).
        self.config.timeout_graceful_shutdown = max(left, 0.0)  # type: ignore[assignment, unused-ignore]


def freeze_startup_objects() -> None:
    """Keep what startup built out of the garbage collector's full passes.

    A full collection walks every object the collector tracks: ~92,000 once the app has
    started (FastAPI's, pydantic's, the routes and settings), ~90-130 ms with the event loop
    stopped on a 2-core VM, and one ran every ~4,000 requests (bench/README.md). Those objects
    live as long as the process, so they are collected once (startup's own garbage) and
    frozen: the full passes then walk only what was made since.
    """
    gc.collect()
    gc.freeze()


class _DrainingProcess(Process):
    """A worker process whose server is a DrainingServer (uvicorn's builds its own Server).

    A worker outlives a supervisor killed outright (SIGKILL, the OOM killer) unless told: it
    went on serving on the port, unsupervised, and a new `llmaas serve` could not bind it. So
    the kernel sends each worker RELAY when its supervisor dies, and it drains as it would
    at a SIGTERM relayed by the supervisor (usage flushed, then exit)."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.supervisor = os.getpid()  # set before uvicorn pickles this object for the child
        super().__init__(config, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        for sig in SUPERVISOR_SIGNALS:  # (blocked until now: DrainingWorkers._started)
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        terminate_with_parent(self.supervisor, RELAY)
        super().target(sockets)

    def terminate(self) -> None:
        """What the supervisor sends to stop it: RELAY (DrainingServer), not SIGTERM."""
        if self.process.exitcode is None and self.process.pid is not None:
            os.kill(self.process.pid, RELAY)

    def retire(self) -> None:
        """At a reload: RETIRE (DrainingServer.retire)."""
        if self.process.exitcode is None and self.process.pid is not None:
            os.kill(self.process.pid, RETIRE)

    answered = False  # its health check, once at least: it has started

    def ping(self, timeout: float = 5) -> bool:
        answers = super().ping(timeout)
        self.answered = self.answered or answers
        return answers

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(
                self.config, float(os.environ[GRACE_ENV]), supervised=True
            )
        return self._server


class DrainingWorkers(Multiprocess):
    """uvicorn's supervisor with DrainingServer workers: on SIGTERM it sends each worker RELAY
    and waits for it, so every worker drains as a single process does. Then, as a single
    process does (uvicorn's Server), it ends by the signal it got: exit status 143 (or 130).

    A worker that exits (killed, crashed) or hangs is replaced by a draining one too, and the
    supervisor says so in the JSON log: uvicorn replaced it with its plain worker, which did not
    drain at SIGTERM and outlived a supervisor killed outright (serving the port unsupervised),
    and logged the death at info, under the warning level it runs at, so nobody heard of it."""

    stopped_by: signal.Signals | None = None

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        log_level: str,
        metrics_dir: Path | None = None,
        pinned: PinnedConfig | None = None,
    ):
        """`metrics_dir`: the workers' metrics directory, if this supervisor's to remove;
        `pinned`: the config file they read, if any (its directory is removed too)."""
        super().__init__(config, sockets)
        self.log_level = log_level
        self.metrics_dir = metrics_dir
        self.pinned = pinned
        # Workers told to stop (RELAY) at a restart, draining: reaped by keep_subprocess_alive,
        # waited for at the end (a second SIGTERM cuts them too)
        self.retiring: list[Process] = []
        self.heard: dict[int | None, float] = {}  # each worker's last answer (or birth), by pid

    def init_processes(self) -> None:
        self.processes.extend(self._started() for _ in range(self.processes_num))

    def _started(self) -> Process:
        """A new draining worker. It is born with SUPERVISOR_SIGNALS blocked (a signal mask is
        inherited through fork and exec, a handler is not) until it ignores them, so that one
        sent to the group while it imports does not kill it; here they wait until it is born."""
        process = _DrainingProcess(self.config, self.sockets)
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        self.heard[process.pid] = time.monotonic()  # (its silence counted from its birth)
        return process

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, with draining replacements and the reason logged."""
        self._reap_retired()
        for idx, process in enumerate(self.processes):
            if self._stopping():  # (a SIGTERM waited behind each ping, and got a new worker)
                return
            now = time.monotonic()
            if process.is_alive(timeout=PING_S):
                self.heard[process.pid] = now
                continue
            hung = process.process.is_alive()  # alive, but not answering its health check
            if hung and now - self.heard.get(process.pid, now) < WORKER_ANSWER_S:
                continue  # silent for less than WORKER_ANSWER_S: importing, or busy
            self.heard.pop(process.pid, None)
            process.kill()
            process.join()
            _forget(process)
            if process.exitcode == STARTUP_FAILURE:  # the app cannot start: nor would another
                _log.error("worker %s failed to start: stopping", process.pid)
                self.should_exit.set()
                return
            if self._stopping():
                return
            why = _ended(process.exitcode)
            if hung:
                started = isinstance(process, _DrainingProcess) and process.answered
                why = "stopped answering" if started else f"did not start within {WORKER_ANSWER_S}s"
                why += " (killed)"
            _log.warning("worker %s %s: starting another", process.pid, why)
            self.processes[idx] = self._started()

    def restart_all(self) -> None:
        """SIGHUP: uvicorn's (each worker replaced once its replacement serves), with draining
        replacements. The old worker drains as at a SIGTERM, among `retiring`, while the next
        is replaced: uvicorn waited for each drain in turn, and a SIGTERM meanwhile waited
        with it, about N times shutdown_grace_s. A SIGTERM or SIGINT stops the restart at once."""
        for idx, old in enumerate(self.processes):
            if self._stopping():
                return
            new = self._started()
            if not self._ready(new):
                new.kill()
                new.join()
                if not self._stopping():
                    _log.error("worker %s was not ready in time: restart stopped", new.pid)
                return
            if isinstance(old, _DrainingProcess):
                old.retire()
            else:
                old.terminate()
            self.retiring.append(old)
            self.processes[idx] = new

    def _ready(self, new: Process) -> bool:
        """uvicorn's wait_until_ready, which also gives up at a SIGTERM or SIGINT not handled
        yet (it is read from the signal queue only once the restart is over)."""
        deadline = time.monotonic() + self.config.timeout_worker_healthcheck
        while time.monotonic() < deadline and not self._stopping():
            if not new.process.is_alive():
                return False
            if new.is_ready(timeout=1):
                return True
            time.sleep(0.1)
        return False

    def _stopping(self) -> bool:
        return self.should_exit.is_set() or any(sig in STOP_SIGNALS for sig in self.signal_queue)

    def _reap_retired(self) -> None:
        """The retiring workers that have exited leave the list, and their gauges /metrics."""
        for process in [p for p in self.retiring if not p.process.is_alive()]:
            process.join()
            _forget(process)
            self.retiring.remove(process)

    def handle_hup(self) -> None:
        """SIGHUP: the operator's config file is checked, then pinned, before any worker is
        replaced; a file that cannot be used leaves every worker as it is, and says why (each
        new worker exited with a traceback, and the reload ended 'not ready in time')."""
        if self.pinned is not None:
            try:
                self.pinned.take()
            except (ConfigError, OSError) as exc:
                said = invalid_configuration("serve", exc).removeprefix("llmaas serve: ")
                _log.error("SIGHUP: %s; no worker restarted", said)
                return
        self.restart_all()

    def handle_ttin(self) -> None:
        """SIGTTIN: one worker more, a draining one (uvicorn's added its plain worker, which did
        not drain and outlived a supervisor killed outright, serving the port)."""
        self.processes_num += 1
        self.processes.append(self._started())
        _log.warning("SIGTTIN: one worker more (%d)", self.processes_num)

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer, retired as at a reload (drained, its listener closed), and
        its gauges leave /metrics (uvicorn's left them in the sums for good)."""
        if self.processes_num <= 1:
            _log.warning("SIGTTOU: one worker left: not stopped")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        if isinstance(process, _DrainingProcess):
            process.retire()
        else:
            process.terminate()
        self.retiring.append(process)  # (reaped once drained: the supervisor's loop goes on)
        _log.warning("SIGTTOU: one worker fewer (%d)", self.processes_num)

    def handle_int(self) -> None:
        self.stopped_by = signal.SIGINT
        super().handle_int()

    def handle_term(self) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_term()

    def join_all(self) -> None:
        """Wait for every worker's drain. A second SIGTERM or SIGINT meanwhile is passed on to
        them (uvicorn's would lie unread in its queue): each then cuts what it still runs."""
        while any(process.exitcode is None for process in [*self.processes, *self.retiring]):
            stops = [sig for sig in self.signal_queue if sig in STOP_SIGNALS]
            self.signal_queue.clear()  # (others, a terminal's hangup or resize: nothing to do)
            if stops:
                for process in [*self.processes, *self.retiring]:
                    process.terminate()
            for process in [*self.processes, *self.retiring]:
                process.process.join(0.1)
        self._reap_retired()

    def run(self) -> None:
        configure_logging_single_threaded(self.log_level)  # no thread: see there
        try:
            super().run()
        finally:
            for directory in (self.metrics_dir, None if self.pinned is None else self.pinned.dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
        if self.stopped_by is not None:
            signal.signal(self.stopped_by, signal.SIG_DFL)
            signal.raise_signal(self.stopped_by)


def _forget(process: Process) -> None:
    """A worker gone (replaced, or its replacement is on its way): its gauges leave /metrics,
    or its last values stay in the sums and minima for good (an engine it had ejected stayed
    `llmaas_engine_up 0`, its streams in flight in `llmaas_inflight_requests`)."""
    if process.pid is not None:
        forget_process(process.pid)


def _ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


@asynccontextmanager
async def started(server: uvicorn.Server) -> AsyncIterator[asyncio.Task[None]]:
    """Run `server` in this event loop; enter once it listens; on exit ask it to stop."""
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no startup event to await
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield task
    finally:
        server.should_exit = True
        await task
