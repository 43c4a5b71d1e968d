"""gateway/metering/spill.py: per-process spill files, claimed only from processes that are gone."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.metering.settlement import LimitSettlement, Settlement
from gateway.metering.spill import SpillDir, count_lines, read_spill
from tests.support.usage_records import usage_record


def settlement(i: int, *, with_record: bool = True) -> Settlement:
    record = usage_record(
        request_id=f"req-{i}",
        time_ms=1_700_000_000_000 + i,
        key_id="k",
        route="completions",
        stream=False,
        prompt_tokens=i,
        completion_tokens=2 * i,
        cached_tokens=0,
        ttft_ms=None,
    )
    limits = LimitSettlement(lease=f"lease-{i}", delta=-i, key_tpm=1000, tenant_tpm=0)
    return Settlement(record.id, "t", "k", record if with_record else None, limits)


def read_all(file: Path, batch: int = 1000) -> list[Settlement]:
    return [s for chunk in read_spill(file, batch) for s in chunk]


def dead_pid() -> int:
    """A pid no process has: above pid_max if possible."""
    for pid in (999_999, 4_194_304 + 1, 2**22 + 17):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid found")


@pytest.fixture
def other_process() -> Iterator[int]:
    """The pid of a live process other than this one."""
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()


def test_settlements_round_trip_through_json() -> None:
    for s in (settlement(3), settlement(4, with_record=False)):
        assert Settlement.from_json(s.to_json()) == s
    bare = Settlement("id", "t", "k", None, None)
    assert Settlement.from_json(bare.to_json()) == bare


def test_own_file_is_appended_claimed_and_renamed(tmp_path: Path) -> None:
    spill = SpillDir(tmp_path / "spill")  # created on the first append
    assert spill.claim() == []
    first, more = [settlement(1)], [settlement(2), settlement(3)]
    spill.append(first)
    spill.append(more)
    assert spill.own.name == f"spill-{os.getpid()}-{spill.life}.jsonl"
    assert spill.pending_files() == [spill.own]
    assert (spill.own.stat().st_mode & 0o777) == 0o600

    claimed = spill.claim()
    assert len(claimed) == 1
    file, own = claimed[0]
    assert own is True
    assert file.name.startswith(f"replay-{os.getpid()}-{spill.life}-")
    assert not spill.own.exists()
    assert read_all(file) == first + more
    assert count_lines(file) == 3
    assert spill.claim() == []  # our own replay file is not claimed again

    spill.append([settlement(4)])  # a new own file; the replay file is untouched
    assert spill.own.exists()
    assert count_lines(file) == 3
    assert sorted(spill.pending_files()) == sorted([file, spill.own])


def test_read_spill_yields_batches_and_skips_a_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = SpillDir(tmp_path)
    written = [settlement(i) for i in range(5)]
    spill.append(written)
    torn = settlement(9).to_json()[:40]
    with spill.own.open("ab") as f:
        f.write(torn)  # the process died mid-write
    batches = list(read_spill(spill.own, 2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [s for b in batches for s in b] == written
    assert any("unreadable spill line" in r.getMessage() for r in caplog.records)
    assert caplog.records[-1].levelno == logging.ERROR


def test_a_torn_line_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    good = [settlement(1), settlement(2)]
    file = tmp_path / "spill-1-x.jsonl"
    file.write_bytes(good[0].to_json() + b'\n{"id": "x"\n\n' + good[1].to_json() + b"\n")
    assert read_all(file) == good
    assert count_lines(file) == 3


def test_a_dead_processes_file_is_claimed_as_not_own(tmp_path: Path) -> None:
    pid = dead_pid()
    orphan = tmp_path / f"spill-{pid}-abcd.jsonl"
    orphan.write_bytes(settlement(1).to_json() + b"\n")
    spill = SpillDir(tmp_path)
    spill.append([settlement(2)])
    claimed = dict(spill.claim())
    assert sorted(claimed.values()) == [False, True]
    assert not orphan.exists()
    (not_own,) = [f for f, own in claimed.items() if not own]
    assert read_all(not_own)[0].record is not None
    assert [s.record.prompt_tokens for s in read_all(not_own) if s.record] == [1]


def test_an_earlier_life_of_our_own_pid_is_claimed(tmp_path: Path) -> None:
    before = SpillDir(tmp_path)
    before.append([settlement(1)])
    half_done = tmp_path / f"replay-{os.getpid()}-{before.life}-0000.jsonl"
    half_done.write_bytes(settlement(2).to_json() + b"\n")  # claimed, then the process died
    after = SpillDir(tmp_path)
    assert after.life != before.life
    claimed = after.claim()
    assert [own for _, own in claimed] == [False, False]
    assert sorted(s.record.prompt_tokens for f, _ in claimed for s in read_all(f) if s.record) == [
        1,
        2,
    ]
    assert all(f.name.startswith(f"replay-{os.getpid()}-{after.life}-") for f, _ in claimed)


def test_a_live_processes_files_are_left_alone(tmp_path: Path, other_process: int) -> None:
    live = tmp_path / f"spill-{other_process}-abcd.jsonl"
    replaying = tmp_path / f"replay-{other_process}-abcd-0001.jsonl"
    for file in (live, replaying):
        file.write_bytes(settlement(1).to_json() + b"\n")
    spill = SpillDir(tmp_path)
    assert spill.claim() == []
    assert live.exists()
    assert replaying.exists()
    assert os.getppid() != os.getpid()
    parent = tmp_path / f"spill-{os.getppid()}-ef01.jsonl"
    parent.write_bytes(b"")
    assert spill.claim() == []
    assert parent.exists()


def test_files_with_unparseable_names_are_claimed(tmp_path: Path) -> None:
    odd = tmp_path / "spill.jsonl"
    odd.write_bytes(settlement(1).to_json() + b"\n")
    claimed = SpillDir(tmp_path).claim()
    assert len(claimed) == 1
    assert claimed[0][1] is False
    assert len(read_all(claimed[0][0])) == 1
    assert not odd.exists()


def test_lines_that_are_json_but_not_settlements_are_skipped(tmp_path: Path) -> None:
    """read_spill skips unreadable lines (ValueError, KeyError, TypeError); a line that parses
    as JSON but is not an object must be skipped too, not raise out of the replay."""
    good = [settlement(1), settlement(2)]
    file = tmp_path / "spill-1-x.jsonl"
    lines = [good[0].to_json(), b"[]", b'{"id":"x"}', b"null", b'"text"', good[1].to_json()]
    file.write_bytes(b"\n".join(lines) + b"\n")
    assert read_all(file) == good
