"""bench.harness's CPU reading of another process: fine enough that a few milliseconds of work
read as that, not as the none or the 10 ms that /proc's clock ticks say (CI once saw a short
engine_streams pass print 0.00 s of gateway CPU), and counting threads that have ended; its
reading of what a process's descriptors are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bench.harness import Server, tree_cpu_seconds
from bench.soak import fd_kind

BURN = """
import sys, threading, time

def burn():
    start = time.thread_time()
    while time.thread_time() - start < 0.003:
        pass

print("ready", flush=True)
for line in sys.stdin:
    if line == "thread\\n":  # in a thread that has ended before anyone reads
        thread = threading.Thread(target=burn)
        thread.start()
        thread.join()
    else:
        burn()
    print("burnt", flush=True)
"""


def test_three_milliseconds_of_cpu_read_as_three_ended_threads_included() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        server = Server("http://unused", child.pid)
        try:
            assert child.stdout.readline() == "ready\n"  # the interpreter's start is over
            for where in ("main", "thread", "main", "thread"):
                before = server.cpu_seconds()
                child.stdin.write(f"{where}\n")
                child.stdin.flush()
                assert child.stdout.readline() == "burnt\n"
                used = server.cpu_seconds() - before
                assert 0.003 <= used < 0.03, (where, used)  # the burn, a line read, not 10 ms ticks
            assert tree_cpu_seconds(child.pid) >= server.cpu_seconds()
        finally:
            child.kill()
    assert server.cpu_seconds() == 0.0  # gone: read as nothing more, not an error


def test_a_processes_descriptors_name_its_connections_their_ends_and_state() -> None:
    """What the soak prints of a descriptor more at its end: a listening socket, a
    connection to it from each side, over IPv4 and IPv6, and a pipe, each named."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port, port6 = listener.getsockname()[1], listener6.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client6 = socket.create_connection(("::1", port6))
    accepted, _ = listener.accept()
    read_end, write_end = os.pipe()
    try:
        targets = Server("http://unused", os.getpid()).fd_targets()
        client_port = client.getsockname()[1]
        assert targets[listener.fileno()] == f"tcp 127.0.0.1:{port} -> 0.0.0.0:0 LISTEN"
        assert targets[client.fileno()] == (
            f"tcp 127.0.0.1:{client_port} -> 127.0.0.1:{port} ESTABLISHED"
        )
        assert targets[accepted.fileno()] == (
            f"tcp 127.0.0.1:{port} -> 127.0.0.1:{client_port} ESTABLISHED"
        )
        assert targets[client6.fileno()].endswith(f" -> [::1]:{port6} ESTABLISHED")
        assert targets[read_end].startswith("pipe:[")
        kinds = {fd_kind(targets[fd], port) for fd in (accepted.fileno(), client.fileno())}
        assert kinds == {f"clients of :{port} ESTABLISHED", f"to 127.0.0.1:{port} ESTABLISHED"}
        assert fd_kind(targets[listener.fileno()], port) == f"listening on 127.0.0.1:{port}"
        assert fd_kind(targets[read_end], port) == "pipe"
    finally:
        for sock in (listener, listener6, client, client6, accepted):
            sock.close()
        os.close(read_end)
        os.close(write_end)
