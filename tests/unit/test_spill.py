"""gateway/metering/spill.py: per-process spill files that name their ledger, claimed only from
processes of the same ledger that are gone; the others are reported, never claimed."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.metering import spill as spill_module
from gateway.metering.settlement import LimitSettlement, Settlement
from gateway.metering.spill import (
    SpillDir,
    SpillName,
    count_lines,
    parse_name,
    read_spill,
    spill_tag,
)
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
    # a spill written before the field was named scope_id (2026-12-04) still reads
    older = b'{"id":"id","tenant":"t","key_id":"k","record":null,"limits":null}'
    assert Settlement.from_json(older) == bare
    # one written before settlements carried their buckets' TATs: not known (0), no bound
    limits = b'{"lease":"l","delta":-5,"key_tpm":10,"tenant_tpm":0}'
    read = Settlement.from_json(older.replace(b'"limits":null', b'"limits":' + limits))
    assert read.limits is not None
    assert (read.limits.delta, read.limits.key_until_ms, read.limits.tenant_until_ms) == (-5, 0, 0)


LEDGER = "0123456789abcdef"
REDIS = "127.0.0.1:6379/0"


def spill_dir(path: Path, ledger: str | None = LEDGER) -> SpillDir:
    spill = SpillDir(path, REDIS)
    spill.ledger = ledger
    return spill


def write(file: Path, *settlements: Settlement) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"".join(s.to_json() + b"\n" for s in settlements))
    return file


def test_names_carry_the_ledger_or_where_redis_was() -> None:
    for ledger, redis in [(LEDGER, ""), ("a-b@c%d/e", ""), (None, REDIS), (None, "redis-0.r:1/2")]:
        tag = spill_tag(ledger, redis)
        assert parse_name(f"spill-{tag}-42-beef.jsonl") == SpillName(
            "spill", ledger, None if ledger else redis, 42, "beef"
        )
        assert parse_name(f"replay-{tag}-7-beef-0001.jsonl") == SpillName(
            "replay", ledger, None if ledger else redis, 7, "beef"
        )
    assert spill_tag(None, REDIS) == "unknown@127.0.0.1%3A6379%2F0"
    for old in ("spill-42-beef.jsonl", "replay-42-beef-0001.jsonl", "spill.jsonl", "x-1-2-3.jsonl"):
        assert parse_name(old).ledger is None
        assert parse_name(old).kind == ""


def test_own_file_is_appended_claimed_and_renamed(tmp_path: Path) -> None:
    spill = spill_dir(tmp_path / "spill")  # created on the first append
    assert spill.claim() == []
    first, more = [settlement(1)], [settlement(2), settlement(3)]
    spill.append(first)
    spill.append(more)
    assert spill.own.name == f"spill-{LEDGER}-{os.getpid()}-{spill.life}.jsonl"
    assert spill.pending_files() == [spill.own]
    assert (spill.own.stat().st_mode & 0o777) == 0o600

    claimed = spill.claim()
    assert len(claimed) == 1
    file, own = claimed[0]
    assert own is True
    assert file.name.startswith(f"replay-{LEDGER}-{os.getpid()}-{spill.life}-")
    assert not spill.own.exists()
    assert read_all(file) == first + more
    assert count_lines(file) == 3
    assert spill.claim() == []  # our own replay file is not claimed again
    assert spill.foreign() == []

    spill.append([settlement(4)])  # a new own file; the replay file is untouched
    assert spill.own.exists()
    assert count_lines(file) == 3
    assert sorted(spill.pending_files()) == sorted([file, spill.own])


def test_before_the_ledger_is_known_a_file_names_its_redis_and_nothing_is_claimed(
    tmp_path: Path,
) -> None:
    orphan = write(tmp_path / f"spill-{LEDGER}-{dead_pid()}-abcd.jsonl", settlement(1))
    spill = spill_dir(tmp_path, ledger=None)
    spill.append([settlement(2)])
    unknown = spill.own
    assert unknown.name == f"spill-unknown@127.0.0.1%3A6379%2F0-{os.getpid()}-{spill.life}.jsonl"
    assert spill.claim() == []  # not even our own: there is no ledger to replay into yet
    assert spill.foreign() == []  # nor can it tell which files are foreign

    spill.ledger = LEDGER  # Redis answered: our own file goes where our queue goes
    spill.append([settlement(3)])
    assert spill.own.name == f"spill-{LEDGER}-{os.getpid()}-{spill.life}.jsonl"
    claimed = spill.claim()
    assert len(claimed) == 3
    assert all(f.name.startswith(f"replay-{LEDGER}-{os.getpid()}-") for f, _ in claimed)
    assert sorted(own for _, own in claimed) == [False, True, True]
    assert not unknown.exists()
    assert not orphan.exists()
    replayed = sorted(s.record.prompt_tokens for f, _ in claimed for s in read_all(f) if s.record)
    assert replayed == [1, 2, 3]


def test_read_spill_yields_batches_and_skips_a_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = spill_dir(tmp_path)
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


def test_a_write_after_a_failed_one_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that filled up halfway through a write left a torn line; the next write, once
    there was room, joined it, and its first settlement was lost with it."""
    spill = spill_dir(tmp_path)
    first, second, third = settlement(1), settlement(2), settlement(3)
    spill.append([first])
    real_write = os.write

    def full_disk(fd: int, data: memoryview | bytes) -> int:
        real_write(fd, bytes(data)[:30])  # what got through before the disk was full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        spill.append([second])
    monkeypatch.setattr(os, "write", real_write)
    spill.append([second, third])  # (the failed one's, written again)
    assert read_all(spill.own) == [first, second, third]


def test_a_torn_line_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    good = [settlement(1), settlement(2)]
    file = tmp_path / "spill-1-x.jsonl"
    file.write_bytes(good[0].to_json() + b'\n{"id": "x"\n\n' + good[1].to_json() + b"\n")
    assert read_all(file) == good
    assert count_lines(file) == 3


def test_a_dead_processes_file_of_our_ledger_is_claimed_as_not_own(tmp_path: Path) -> None:
    orphan = write(tmp_path / f"spill-{LEDGER}-{dead_pid()}-abcd.jsonl", settlement(1))
    spill = spill_dir(tmp_path)
    spill.append([settlement(2)])
    claimed = dict(spill.claim())
    assert sorted(claimed.values()) == [False, True]
    assert not orphan.exists()
    (not_own,) = [f for f, own in claimed.items() if not own]
    assert [s.record.prompt_tokens for s in read_all(not_own) if s.record] == [1]


def test_files_of_another_ledger_are_left_in_place_and_reported(tmp_path: Path) -> None:
    pid = dead_pid()
    other = [
        write(tmp_path / f"spill-feedfacefeedface-{pid}-abcd.jsonl", settlement(1), settlement(2)),
        write(tmp_path / f"replay-feedfacefeedface-{pid}-abcd-0001.jsonl", settlement(3)),
    ]
    before = [f.read_bytes() for f in other]
    spill = spill_dir(tmp_path)
    assert spill.claim() == []
    assert [f.read_bytes() for f in other] == before
    found = {f.path: (f.name.ledger, f.records) for f in spill.foreign()}
    assert found == {other[0]: ("feedfacefeedface", 2), other[1]: ("feedfacefeedface", 1)}
    assert spill_dir(tmp_path, ledger="feedfacefeedface").claim() != []  # their ledger's gateway


def test_a_foreign_file_is_read_again_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []

    def counting(file: Path) -> int:
        reads.append(file)
        return count_lines(file)

    monkeypatch.setattr(spill_module, "count_lines", counting)
    path = write(tmp_path / f"spill-feedfacefeedface-{dead_pid()}-abcd.jsonl", settlement(1))
    spill = spill_dir(tmp_path)
    assert [f.records for f in spill.foreign()] == [1]
    assert [f.records for f in spill.foreign()] == [1]
    assert reads == [path]  # replay passes look often; an unchanged file is not read again
    with path.open("ab") as more:
        more.write(settlement(2).to_json() + b"\n")
    assert [f.records for f in spill.foreign()] == [2]
    assert reads == [path, path]


def test_an_unknown_ledgers_file_is_reported_once_its_writer_is_gone(
    tmp_path: Path, other_process: int
) -> None:
    tag = spill_tag(None, REDIS)
    gone = write(tmp_path / f"spill-{tag}-{dead_pid()}-abcd.jsonl", settlement(1))
    live = write(tmp_path / f"spill-{tag}-{other_process}-abcd.jsonl", settlement(2))
    spill = spill_dir(tmp_path)
    assert spill.claim() == []  # the same Redis location is no proof of the same ledger
    (found,) = spill.foreign()  # the live writer may still learn its ledger and replay it
    assert (found.path, found.name.ledger, found.name.redis, found.records) == (
        gone,
        None,
        REDIS,
        1,
    )
    assert gone.exists()
    assert live.exists()


def test_old_format_and_unparseable_names_are_reported_not_claimed(tmp_path: Path) -> None:
    pid = dead_pid()
    old = [
        write(tmp_path / f"spill-{pid}-abcd.jsonl", settlement(1)),
        write(tmp_path / f"replay-{pid}-abcd-0001.jsonl", settlement(2), settlement(3)),
        write(tmp_path / "spill.jsonl", settlement(4)),
    ]
    spill = spill_dir(tmp_path)
    assert spill.claim() == []
    assert all(f.exists() for f in old)
    assert sorted((f.path.name, f.name.ledger, f.records) for f in spill.foreign()) == sorted(
        [(old[0].name, None, 1), (old[1].name, None, 2), (old[2].name, None, 1)]
    )


def test_a_file_renamed_to_our_ledger_with_pid_0_is_adopted(tmp_path: Path) -> None:
    """What an operator does with a file they know is this ledger's (see the report)."""
    adopted = write(tmp_path / f"spill-{LEDGER}-0-adopted.jsonl", settlement(1))
    claimed = spill_dir(tmp_path).claim()
    assert [own for _, own in claimed] == [False]
    assert not adopted.exists()
    assert len(read_all(claimed[0][0])) == 1


def test_an_earlier_life_of_our_own_pid_is_claimed(tmp_path: Path) -> None:
    before = spill_dir(tmp_path)
    before.append([settlement(1)])
    half_done = tmp_path / f"replay-{LEDGER}-{os.getpid()}-{before.life}-0000.jsonl"
    write(half_done, settlement(2))  # claimed, then the process died
    after = spill_dir(tmp_path)
    assert after.life != before.life
    claimed = after.claim()
    assert [own for _, own in claimed] == [False, False]
    assert sorted(s.record.prompt_tokens for f, _ in claimed for s in read_all(f) if s.record) == [
        1,
        2,
    ]
    assert all(
        f.name.startswith(f"replay-{LEDGER}-{os.getpid()}-{after.life}-") for f, _ in claimed
    )


def test_a_live_processes_files_are_left_alone(tmp_path: Path, other_process: int) -> None:
    live = write(tmp_path / f"spill-{LEDGER}-{other_process}-abcd.jsonl", settlement(1))
    replaying = write(tmp_path / f"replay-{LEDGER}-{other_process}-abcd-0001.jsonl", settlement(1))
    spill = spill_dir(tmp_path)
    assert spill.claim() == []
    assert spill.foreign() == []
    assert live.exists()
    assert replaying.exists()
    assert os.getppid() != os.getpid()
    parent = tmp_path / f"spill-{LEDGER}-{os.getppid()}-ef01.jsonl"
    parent.write_bytes(b"")
    assert spill.claim() == []
    assert parent.exists()


def test_lines_that_are_json_but_not_settlements_are_skipped(tmp_path: Path) -> None:
    """read_spill skips unreadable lines (ValueError, KeyError, TypeError); a line that parses
    as JSON but is not an object must be skipped too, not raise out of the replay."""
    good = [settlement(1), settlement(2)]
    file = tmp_path / "spill-1-x.jsonl"
    lines = [good[0].to_json(), b"[]", b'{"id":"x"}', b"null", b'"text"', good[1].to_json()]
    file.write_bytes(b"\n".join(lines) + b"\n")
    assert read_all(file) == good
