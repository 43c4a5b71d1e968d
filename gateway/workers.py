"""`--workers N`: the supervisor of draining workers (DrainingWorkers), each a DrainingServer, and
the checked copy of the config file they read (PinnedConfig)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from gateway.draining_server import (
    ANSWER_END_S,
    RELAY,
    RETIRE,
    SUPERVISOR_SIGNALS,
    DrainingServer,
)
from gateway.embedded.process_group import terminate_with_parent
from gateway.logs import configure_logging_single_threaded
from gateway.metering.settler import HURRIED_FLUSH_S
from gateway.metrics import forget_process
from gateway.settings import Settings
from gateway.settings_load import (
    ConfigError,
    invalid_configuration,
    usable_settings,
)

GRACE_ENV = "LLMAAS_SHUTDOWN_GRACE_S"
# How long the supervisor of `--workers N` waits for a worker's answer to its health check,
# and for a new worker to serve (at SIGHUP): uvicorn's 5 s killed workers still importing on
# a busy or CPU-limited machine (8 workers on one core took 12 s) as "stopped answering".
WORKER_ANSWER_S = 30
# Each health check waits this long for its answer; a worker is killed only once silent for
# WORKER_ANSWER_S (one 30-s check held the supervisor's loop, and a SIGTERM, that long).
PING_S = 1.0
# What stops the gateway; a second one during a drain cuts what still runs.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# Past what a worker's stop may take (stop_within), how long the supervisor still waits for it
# before it kills it: a hung or stopped (SIGSTOP) worker kept the supervisor waiting forever,
# past any pod's termination budget (the chart's is 10 s over the grace and the flush).
STOP_MARGIN_S = 5.0
_log = logging.getLogger("llmaas.server")


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

    def take(self) -> Settings:
        """Copy the operator's file and check the copy (usable_settings), then pin it: its
        settings. Raises ConfigError (naming the operator's file, not the copy) or OSError;
        pins nothing then."""
        staged = self.dir / "next.yaml"
        shutil.copyfile(self.source, staged)
        try:
            settings = usable_settings(staged)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(staged), str(self.source))) from None
        staged.replace(self.path)
        return settings


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
        *,
        grace_s: float,
        flush_s: float,
    ):
        """`metrics_dir`: the workers' metrics directory, if this supervisor's to remove;
        `pinned`: the config file they read, if any (its directory is removed too); `grace_s`
        and `flush_s`: the workers' shutdown_grace_s and metering.flush_timeout_s, what their
        stop may take (stop_within), then they are killed."""
        super().__init__(config, sockets)
        self.log_level = log_level
        self.grace_s = grace_s  # (pinned: a reload does not change it, GRACE_ENV)
        self.flush_s = flush_s  # the longest of the workers', which a reload may lengthen
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
                settings = self.pinned.take()
            except (ConfigError, OSError) as exc:
                said = invalid_configuration("serve", exc).removeprefix("llmaas serve: ")
                _log.error("SIGHUP: %s; no worker restarted", said)
                return
            # The new workers flush for as long as the file says now: a stop waits for that (a
            # worker killed in its flush lost the records it held). Older ones may still drain
            # with theirs: the longest is kept.
            self.flush_s = max(self.flush_s, settings.metering.flush_timeout_s)
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
        them (uvicorn's would lie unread in its queue): each then cuts what it still runs. A
        worker not stopped within stop_within (a second signal: at once, plus its hurried flush)
        is killed and named in the log: one hung or stopped kept the supervisor waiting.

        Its own copy of the listening socket is closed first: no worker is started any more,
        and the workers close theirs as they stop, so that the port then refuses connections as
        a single process's does. Kept open, it let the kernel take connections that no worker
        would serve, for as long as the workers' usage flush waited on Redis, and reset them
        at the exit."""
        for listener in self.sockets:
            listener.close()
        began = time.monotonic()
        deadline = began + stop_within(self.grace_s, self.flush_s)
        while any(process.exitcode is None for process in [*self.processes, *self.retiring]):
            stops = [sig for sig in self.signal_queue if sig in STOP_SIGNALS]
            self.signal_queue.clear()  # (others, a terminal's hangup or resize: nothing to do)
            if stops:
                for process in [*self.processes, *self.retiring]:
                    process.terminate()
                hurried = ANSWER_END_S + HURRIED_FLUSH_S + STOP_MARGIN_S
                deadline = min(deadline, time.monotonic() + hurried)
            if time.monotonic() >= deadline:
                self._kill_late(time.monotonic() - began)
            for process in [*self.processes, *self.retiring]:
                process.process.join(0.1)
        self._reap_retired()

    def _kill_late(self, waited_s: float) -> None:
        for process in [*self.processes, *self.retiring]:
            if process.exitcode is None:
                process.kill()
                process.process.join()
                _log.error("worker %s killed: did not stop within %.0fs", process.pid, waited_s)

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


def stop_within(grace_s: float, flush_s: float) -> float:
    """How long a worker of `--workers N` may take to stop, then its supervisor kills it: its
    grace, the answers' ends (ANSWER_END_S), its usage flush (`flush_s`), and STOP_MARGIN_S."""
    return grace_s + ANSWER_END_S + flush_s + STOP_MARGIN_S


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
