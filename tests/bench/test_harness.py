"""bench.harness's CPU reading of another process: fine enough that a few milliseconds of work
read as that, not as the none or the 10 ms that /proc's clock ticks say (CI once saw a short
engine_streams pass print 0.00 s of gateway CPU), and counting threads that have ended."""

from __future__ import annotations

import subprocess
import sys

from bench.harness import Server, tree_cpu_seconds

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
