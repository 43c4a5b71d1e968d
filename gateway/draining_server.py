"""The gateway's uvicorn server: the first SIGTERM/SIGINT drains, a second cuts (DrainingServer),
and the signals its supervisor drives a worker with."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn

from gateway.api.drain import Drain

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
_log = logging.getLogger("llmaas.server")


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
        self.ended_by = "grace over"  # what ended the drain, as its log line says
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
            self.ended_by = "a second signal"
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
                _log.warning(
                    "%s: %d requests in flight, %d cut", self.ended_by, drain.in_flight, cut
                )
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
