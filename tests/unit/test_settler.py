"""gateway/metering/settler.py against real Redis servers that answer, are gone, or come back:
no settlement is lost and none counts twice."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from gateway.embedded.process_group import stop_process_group
from gateway.embedded.redis_server import ping, redis_config, redis_server_binary
from gateway.metering.ledger import LEDGER_ID, Ledger, log_key
from gateway.metering.record import UsageRecord
from gateway.metering.settlement import Settlement
from gateway.metering.settler import Settler
from gateway.metering.spill import count_lines
from gateway.metrics import Metrics
from gateway.netutil import free_port
from gateway.redis_client import redis_client
from gateway.settings import MeteringSettings
from tests.support.redis_control import restartable_redis
from tests.support.usage_records import settlement_of, usage_record

pytestmark = pytest.mark.asyncio(loop_scope="session")
_tenants = count()


@asynccontextmanager
async def redis_on(port: int, workdir: Path) -> AsyncIterator[None]:
    """A redis-server on a given port (to bring one up where a settler already points)."""
    await asyncio.to_thread(_write_config, port, workdir)
    proc = await asyncio.create_subprocess_exec(
        str(redis_server_binary()),
        str(workdir / "redis.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await until(lambda: ping(f"redis://127.0.0.1:{port}/0", 0.5), "redis-server started")
        yield
    finally:
        await stop_process_group(proc, grace_s=5.0)


def _write_config(port: int, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "redis.conf").write_text(redis_config(port, workdir))


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 10.0
) -> None:
    """Poll `check` until it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


def settings(spill_dir: Path, queue_max: int = 10_000) -> MeteringSettings:
    return MeteringSettings(
        spill_dir=spill_dir,
        write_timeout_s=0.2,
        flush_timeout_s=0.5,
        queue_max=queue_max,
        retry_max_interval_s=0.2,
    )


def settler_on(client: Redis, spill_dir: Path, queue_max: int = 10_000) -> Settler:
    config = settings(spill_dir, queue_max)
    return Settler(Ledger(client, config, window_s=60), config, Metrics())


def settlements(tenant: str, n: int) -> list[Settlement]:
    return [
        settlement_of(
            usage_record(
                request_id=f"req-{i}",
                tenant=tenant,
                key_id="k",
                prompt_tokens=10 + i,
                completion_tokens=1,
                cached_tokens=0,
            )
        )
        for i in range(n)
    ]


def tenant() -> str:
    return f"st{next(_tenants)}"


def gauge(settler: Settler, name: str = "llmaas_usage_pending_records") -> float:
    value = settler.metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def spill_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob("*.jsonl"))


def spilled_lines(spill_dir: Path) -> int:
    """Settlements in the spill files of a directory (0 if it was never created)."""
    return sum(count_lines(f) for f in spill_dir.glob("*.jsonl"))


async def logged_ids(client: Redis, tenant: str) -> list[str]:
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await client.xrange(log_key(tenant)))
    return [UsageRecord.from_fields(fields).id for _, fields in entries]


async def test_settle_writes_at_once_when_redis_answers(redis: Redis, tmp_path: Path) -> None:
    t = tenant()
    settler = settler_on(redis, tmp_path)
    batch = settlements(t, 3)
    for s in batch:
        await settler.settle(s)
        assert await logged_ids(redis, t) == [x.id for x in batch[: batch.index(s) + 1]]
    assert settler.pending == 0
    assert gauge(settler) == 0
    tokens = settler.metrics.registry.get_sample_value(
        "llmaas_tokens_total", {"tenant": t, "model": "m", "kind": "prompt"}
    )
    assert tokens == 10 + 11 + 12
    assert spilled_lines(tmp_path) == 0
    await settler.close()
    assert settler.pending == 0
    assert spilled_lines(tmp_path) == 0


class CountingLedger(Ledger):
    """A real ledger that remembers the size of every batch it was asked to write."""

    def __init__(self, client: Redis, config: MeteringSettings) -> None:
        super().__init__(client, config, window_s=60)
        self.batches: list[int] = []
        self.lingers: list[float] = []

    async def write(self, batch: Sequence[Settlement], *, linger_s: float = 0.0) -> None:
        self.batches.append(len(batch))
        self.lingers.append(linger_s)
        await super().write(batch, linger_s=linger_s)


async def test_concurrent_settlements_share_round_trips(redis: Redis, tmp_path: Path) -> None:
    t = tenant()
    config = settings(tmp_path)
    ledger = CountingLedger(redis, config)
    settler = Settler(ledger, config, Metrics())
    batch = settlements(t, 50)
    await asyncio.gather(*(settler.settle(s) for s in batch))
    # every settle() returned with its record in Redis, each once
    assert sorted(await logged_ids(redis, t)) == sorted(s.id for s in batch)
    assert sum(ledger.batches) == 50
    assert len(ledger.batches) < 50 / 4, ledger.batches  # the first alone, then the rest together
    assert settler.pending == 0
    await settler.close()
    assert spilled_lines(tmp_path) == 0


async def test_settlements_linger_for_company_but_one_that_frees_a_slot_hurries(
    redis: Redis, tmp_path: Path
) -> None:
    t = tenant()
    config = settings(tmp_path)
    ledger = CountingLedger(redis, config)
    settler = Settler(ledger, config, Metrics(), linger_s=60.0, slot_linger_s=0.01)
    first, second, third = settlements(t, 3)
    lingering = settler.submit(first)
    assert lingering is not None
    await asyncio.sleep(0.1)
    assert not lingering.done()  # waiting for company (it may wait a minute)
    assert await logged_ids(redis, t) == []
    # A settlement that frees a concurrency slot: the batch before it goes at once, then it.
    freeing = settler.submit(second, frees_slot=True)
    assert freeing is not None
    await asyncio.wait_for(asyncio.gather(lingering, freeing), 10)
    assert sorted(await logged_ids(redis, t)) == sorted([first.id, second.id])
    assert ledger.lingers == [60.0, 0.01]
    # Any call that is not lazy takes a lingering batch with it.
    riding = settler.submit(third)
    assert riding is not None
    await asyncio.sleep(0.05)
    assert not riding.done()
    await ledger.pipe.call("PING")
    await asyncio.wait_for(riding, 10)
    assert third.id in await logged_ids(redis, t)
    await settler.close()
    assert spilled_lines(tmp_path) == 0


async def test_a_settler_with_nothing_to_write_counts_no_failed_write(tmp_path: Path) -> None:
    """Found by review: a gateway started before Redis counted each failed ask of the ledger's
    id as a failed write (7 with nothing pending): LlmaasUsageWritesFailing fired on an idle
    gateway."""
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, max_connections=4)
    settler = settler_on(client, tmp_path / "spill")
    try:
        await settler.start()
        await asyncio.sleep(0.5)  # ~4 tries of the ledger's id (0.05 s, doubling)
        assert gauge(settler, "llmaas_usage_write_failures_total") == 0
        await settler.settle(settlements(tenant(), 1)[0])
        await until(
            lambda: gauge(settler, "llmaas_usage_write_failures_total") >= 1,
            "a failed write counted once there is one",
        )
    finally:
        await settler.close()
        await client.aclose()


async def test_settler_without_ledger_only_counts_tokens(tmp_path: Path) -> None:
    config = settings(tmp_path)
    settler = Settler(None, config, Metrics())
    await settler.start()
    assert settler.task is None
    (s,) = settlements(tenant(), 1)
    await settler.settle(s)
    await settler.close()
    assert settler.pending == 0
    assert spilled_lines(tmp_path) == 0
    assert s.record is not None
    tokens = settler.metrics.registry.get_sample_value(
        "llmaas_tokens_total", {"tenant": s.tenant, "model": "m", "kind": "completion"}
    )
    assert tokens == 1


async def test_redis_gone_queue_then_spill_then_replay_on_start(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    (tmp_path / "redis").mkdir()
    t = tenant()
    batch = settlements(t, 8)
    async with restartable_redis(tmp_path / "redis") as server:  # its data outlives a restart
        doomed = redis_client(server.url, timeout_s=0.2, max_connections=4)
        first = settler_on(doomed, spill_dir, queue_max=3)
        await first.start()
        await until(lambda: first.spill.ledger is not None, "the settler knows its ledger")
        await first.settle(batch[0])  # Redis answers: written there
        assert first.pending == 0
        await server.stop()
        try:
            started = time.monotonic()
            await first.settle(batch[1])  # waits write_timeout_s, then queues
            assert time.monotonic() - started < 1.0
            assert len(first.queue) == 1
            for s in batch[2:6]:  # two more fit the queue; the rest go to disk
                await first.settle(s)
            assert list(first.queue) == batch[1:4]
            assert spilled_lines(spill_dir) == 2
            assert first.pending == 5
            assert gauge(first) == 5
            assert gauge(first, "llmaas_usage_spilled_records_total") == 2
            assert gauge(first, "llmaas_usage_write_failures_total") >= 1

            started = time.monotonic()
            await first.close()  # Redis stays down: the queue goes to disk after flush_timeout_s
            assert 0.4 < time.monotonic() - started < 3.0
            assert not first.queue
            assert spilled_lines(spill_dir) == 5
            assert first.pending == 5
            assert gauge(first) == 5
            await first.settle(batch[6])  # settled after close: straight to disk
            assert spilled_lines(spill_dir) == 6
            assert first.pending == gauge(first) == 6
            assert [f.name.split("-")[1] for f in spill_dir.glob("*.jsonl")] == [first.spill.ledger]
        finally:
            await doomed.aclose()

        # A later life (the next gateway) once the same ledger is back, with the same spill_dir.
        await server.start()
        await next_life_replays(server.url, spill_dir, batch)


async def next_life_replays(url: str, spill_dir: Path, batch: list[Settlement]) -> None:
    """A settler replays the spill files of its ledger on start, each settlement once; one of
    them already reached Redis (a lost reply, say)."""
    redis = redis_client(url, timeout_s=5.0, max_connections=4)
    t = batch[0].tenant
    second = settler_on(redis, spill_dir)
    await Ledger(redis, settings(spill_dir), window_s=60).write([batch[3]])
    await second.settle(batch[7])
    await second.start()
    try:
        expected = {s.id for s in batch}
        await until(
            lambda: _has(redis, t, len(expected)), "the spill files were replayed", timeout_s=10
        )
        await until(lambda: second.pending == 0, "nothing left pending")
        ids = await logged_ids(redis, t)
        assert sorted(ids) == sorted(expected)  # exactly once each: batch[3] not twice
        assert spill_files(spill_dir) == []
        assert gauge(second) == 0
        assert gauge(second, "llmaas_usage_foreign_spill_records") == 0
    finally:
        await second.close()
        await redis.aclose()
    assert second.pending == 0
    assert spill_files(spill_dir) == []


async def test_the_ledger_id_is_created_once_and_shared(redis: Redis, tmp_path: Path) -> None:
    ledgers = [Ledger(redis, settings(tmp_path), window_s=60) for _ in range(2)]
    ids = await asyncio.gather(*(ledger.identity() for ledger in ledgers * 2))
    assert len(set(ids)) == 1
    assert await redis.get(LEDGER_ID) == ids[0].encode()
    assert ledgers[0].location == f"127.0.0.1:{redis.connection_pool.connection_kwargs['port']}/0"


async def test_a_redis_that_lost_its_data_gets_the_ledger_id_back_with_the_next_write(
    redis: Redis, tmp_path: Path
) -> None:
    # A running gateway kept the id it had learnt; the next one to start made another, and
    # everything the first spilled from then on was "another ledger's", never replayed.
    ledger = Ledger(redis, settings(tmp_path), window_s=60)
    known = await ledger.identity()
    await redis.flushall()  # Redis restarted empty
    await ledger.write(settlements(tenant(), 1))
    assert await redis.get(LEDGER_ID) == known.encode()
    assert await Ledger(redis, settings(tmp_path), window_s=60).identity() == known
    await redis.flushall()  # lost again, and another process starts before this one writes
    other = await Ledger(redis, settings(tmp_path), window_s=60).identity()
    assert other != known
    await ledger.write(settlements(tenant(), 1))
    assert ledger.id == other  # its next spill file is the ledger's now in Redis


async def test_another_ledgers_spill_files_are_reported_and_left_alone(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill_dir = tmp_path / "spill"
    t = tenant()
    other = write_spill(spill_dir / "spill-feedfacefeedface-0-x.jsonl", settlements(t, 3))
    unknown = write_spill(spill_dir / "spill-unknown@10.0.0.9%3A6379%2F0-0-x.jsonl", [])
    old = write_spill(spill_dir / f"spill-{os.getpid()}-x.jsonl", settlements(t, 2))
    content = [f.read_bytes() for f in (other, unknown, old)]

    settler = settler_on(redis, spill_dir)
    await settler.start()
    try:
        await until(lambda: gauge(settler, "llmaas_usage_foreign_spill_records") == 5, "reported")
        write_spill(spill_dir / "spill-feedfacefeedface-0-y.jsonl", settlements(t, 1))
        settler.wakeup.set()  # another look: the new file counts, the others are not warned again
        await until(lambda: gauge(settler, "llmaas_usage_foreign_spill_records") == 6, "looked")
        assert await logged_ids(redis, t) == []
        assert [f.read_bytes() for f in (other, unknown, old)] == content
        warned = {
            vars(r)["fields"]["file"]: vars(r)["fields"]
            for r in caplog.records
            if r.getMessage() == "spill file of another ledger left in place"
        }
        assert len([r for r in caplog.records if "another ledger" in r.getMessage()]) == 4
        assert warned[str(other)]["ledger"] == "feedfacefeedface"
        assert warned[str(other)]["records"] == 3
        assert warned[str(unknown)]["ledger"] == "unknown"
        assert warned[str(unknown)]["redis"] == "10.0.0.9:6379/0"
        assert warned[str(old)]["ledger"] == "unknown"
        assert warned[str(old)]["records"] == 2
        assert {w["this_ledger"] for w in warned.values()} == {settler.spill.ledger}
        assert settler.pending == 0
    finally:
        await settler.close()


async def test_a_spill_from_before_redis_ever_answered_is_not_replayed_by_another_gateway(
    tmp_path: Path,
) -> None:
    """A gateway that never reached its Redis knows only where the ledger was meant to be; a
    Redis found there later is not proof of the same ledger, so the file is kept and reported."""
    port = free_port()
    spill_dir = tmp_path / "spill"
    client = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, max_connections=4)
    t = tenant()
    try:
        never = settler_on(client, spill_dir)
        await never.start()
        for s in settlements(t, 2):
            await never.settle(s)
        await never.close()
        (file,) = spill_dir.glob("*.jsonl")
        assert file.name.startswith(f"spill-unknown@127.0.0.1%3A{port}%2F0-{os.getpid()}-")
        async with redis_on(port, tmp_path / "redis"):
            later = settler_on(client, spill_dir)
            await later.start()
            try:
                await until(
                    lambda: gauge(later, "llmaas_usage_foreign_spill_records") == 2, "reported"
                )
                assert await logged_ids(client, t) == []
                assert list(spill_dir.glob("*.jsonl")) == [file]
            finally:
                await later.close()
    finally:
        await client.aclose()


def write_spill(file: Path, batch: list[Settlement]) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"".join(s.to_json() + b"\n" for s in batch))
    return file


async def _has(client: Redis, tenant: str, n: int) -> bool:
    return len(await logged_ids(client, tenant)) >= n


async def test_a_running_settler_catches_up_when_redis_comes_back(tmp_path: Path) -> None:
    port = free_port()
    client = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, max_connections=4)
    settler = settler_on(client, tmp_path / "spill", queue_max=4)
    await settler.start()
    t = tenant()
    batch = settlements(t, 10)
    try:
        for s in batch:
            await settler.settle(s)
        assert len(settler.queue) == 4
        assert spilled_lines(tmp_path / "spill") == 6
        (unknown,) = (tmp_path / "spill").glob("*.jsonl")  # Redis never answered yet
        assert unknown.name.startswith(f"spill-unknown@127.0.0.1%3A{port}%2F0-")
        assert settler.pending == gauge(settler) == 10
        failures = gauge(settler, "llmaas_usage_write_failures_total")
        await until(  # the background task retries meanwhile, without losing any
            lambda: gauge(settler, "llmaas_usage_write_failures_total") >= failures + 2,
            "the background task retried",
        )
        assert settler.pending == gauge(settler) == 10
        assert len(settler.queue) + spilled_lines(tmp_path / "spill") == 10
        async with redis_on(port, tmp_path / "redis"):
            # Backoff is capped at retry_max_interval_s; the own spill file replays too: once
            # this process knows its ledger, it replays what it spilled before, as its queue.
            await until(lambda: settler.pending == 0, "queue and spill file written")
            assert sorted(await logged_ids(client, t)) == sorted(s.id for s in batch)
            assert list((tmp_path / "spill").glob("*.jsonl")) == []
            assert gauge(settler) == 0
            extra = settlements(t, 1)[0]
            await settler.settle(extra)  # the queue is empty again: written at once
            assert (await logged_ids(client, t))[-1] == extra.id
            await settler.close()
            assert settler.pending == 0
    finally:
        await client.aclose()


async def test_close_flushes_the_queue_when_redis_is_back(tmp_path: Path) -> None:
    port = free_port()
    client = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, max_connections=4)
    settler = settler_on(client, tmp_path / "spill")  # not started: only close() writes
    t = tenant()
    batch = settlements(t, 5)
    try:
        for s in batch:
            await settler.settle(s)
        assert settler.pending == gauge(settler) == 5
        async with redis_on(port, tmp_path / "redis"):
            await settler.close()
            assert settler.pending == gauge(settler) == 0
            assert await logged_ids(client, t) == [s.id for s in batch]  # oldest first
        assert spilled_lines(tmp_path / "spill") == 0
    finally:
        await client.aclose()


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A Redis URL whose server accepts connections and never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def test_close_waits_for_settlements_under_way(tmp_path: Path) -> None:
    """Shutdown may begin while a settlement still waits for Redis (uvicorn cancels requests
    after its grace period; the relay shields their settlements). close() lets it end in the
    queue first, so it is spilled with the rest, not left behind."""
    async with silent_server() as url:
        client = redis_client(url, timeout_s=5.0, max_connections=4)
        settler = settler_on(client, tmp_path)
        (s,) = settlements(tenant(), 1)
        try:
            settling = asyncio.create_task(settler.settle(s))
            await asyncio.sleep(0.05)  # its write is on the wire, unanswered
            assert not settling.done()
            await settler.close()
            assert settling.done()
            assert spilled_lines(tmp_path) == 1
            assert gauge(settler, "llmaas_usage_lost_records_total") == 0
        finally:
            await client.aclose()


async def test_settle_never_raises_even_when_the_spill_dir_is_unusable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """settle() promises never to raise (the relay awaits it after the answer was sent). With
    Redis down, a full queue and a spill_dir that cannot be created (a read-only volume, a
    missing home), settlements stay in memory beyond the bound; at shutdown they are logged in
    full and counted as lost."""
    blocker = tmp_path / "not-a-dir"
    await asyncio.to_thread(blocker.write_bytes, b"")
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, max_connections=4)
    settler = settler_on(client, blocker / "spill", queue_max=1)
    batch = settlements(tenant(), 4)
    try:
        for s in batch[:3]:
            await settler.settle(s)  # the second and third do not fit the queue
        assert list(settler.queue) == batch[:3]
        assert settler.pending == gauge(settler) == 3
        assert gauge(settler, "llmaas_usage_spill_failures_total") >= 1
        assert gauge(settler, "llmaas_usage_write_failures_total") >= 1

        caplog.clear()
        await settler.close()
        await settler.settle(batch[3])  # after close: no Redis, no disk either
        assert settler.pending == gauge(settler) == 0
        assert gauge(settler, "llmaas_usage_lost_records_total") == 4
        logged = [
            Settlement.from_json(vars(r)["fields"]["settlement"])
            for r in caplog.records
            if r.getMessage() == "usage settlement lost"
        ]
        assert logged == batch
    finally:
        await client.aclose()


async def test_a_hurry_while_the_flush_waits_between_tries_cuts_it_short(tmp_path: Path) -> None:
    """Found by review: a second signal while close() slept between two tries of a Redis that
    refused connections raised in hurry() (an ended Timeout rescheduled): a traceback in the
    log, and the flush's listeners after it skipped. It cuts the flush short, quietly."""
    gone = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, max_connections=4)
    settler = settler_on(gone, tmp_path / "spill")
    settler.settings = settler.settings.model_copy(update={"flush_timeout_s": 30.0})
    for s in settlements(tenant(), 3):
        settler.queue.append(s)
    closing = asyncio.create_task(settler.close())
    for _ in range(10):  # between tries, and during one, alike
        await asyncio.sleep(0.05)
        settler.hurry()
    await asyncio.wait_for(closing, 10)  # (not flush_timeout_s)
    assert spilled_lines(tmp_path / "spill") == 3
    await gone.aclose()
