"""The MONITOR line parser and grouping used by the Redis Cluster slot test."""

from __future__ import annotations

from tests.support.redis_monitor import groups, parse_monitor_line


def test_monitor_lines_are_parsed_with_escapes() -> None:
    line = r'1.5 [0 127.0.0.1:5] "SET" "llmaas:{t:a}:x" "{\"a\":\"b c\"}\xff\\"'
    assert parse_monitor_line(line) == (
        "127.0.0.1:5",
        [b"SET", b"llmaas:{t:a}:x", b'{"a":"b c"}\xff\\'],
    )
    assert groups(
        [
            ("c1", [b"MULTI"]),
            ("c2", [b"GET", b"a"]),
            ("c1", [b"SET", b"b", b"1"]),
            ("c1", [b"EXEC"]),
            ("lua", [b"GET", b"x"]),
            ("lua", [b"GET", b"y"]),
        ]
    ) == [[[b"GET", b"a"]], [[b"SET", b"b", b"1"]], [[b"GET", b"x"], [b"GET", b"y"]]]
