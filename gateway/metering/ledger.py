"""The usage ledger in Redis: settlements written in one pipelined round trip, idempotently.

Layout (every key of a tenant under its hash tag, so one script touches them together):
  llmaas:{t:<tenant>}:usage:log            stream of records, trimmed to the retention
  llmaas:{t:<tenant>}:usage:day:<date>     hash of daily totals; field JSON [key_id, model, metric]
  llmaas:{t:<tenant>}:usage:seen:<id>      marks a settled record id for `dedupe_window_s`
  llmaas:{usage:tenants}:last              sorted sets of the tenants with usage, for admin
  llmaas:{usage:tenants}:first             queries: the time of a tenant's last write (the
                                           gateway's clock, ms) and its earliest record's
                                           time; metering/query.py prunes them with the
                                           retention and moves over llmaas:usage:tenants, the
                                           set gateways before 2026-12-06 wrote
  llmaas:ledger:id                         this ledger's id (random, set once): spill files
                                           carry it so they replay into their own ledger only
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.limits.limiter import scope_keys
from gateway.limits.lua import with_bucket
from gateway.metering.record import FIELD_NAMES, FINE_TUNE_ROUTE, day_of
from gateway.metering.settlement import Settlement
from gateway.redis_pipe import PipeScript, RedisPipe
from gateway.redis_wire import Command
from gateway.settings import MeteringSettings

TENANTS = "llmaas:{usage:tenants}:last"  # (one hash slot: query.py prunes both in one script)
TENANTS_FIRST = "llmaas:{usage:tenants}:first"
LEGACY_TENANTS = "llmaas:usage:tenants"  # a set, as gateways before 2026-12-06 wrote it
LEDGER_ID = "llmaas:ledger:id"
METRICS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
# A fine-tuning job's record adds to its own daily totals, apart from the model's inference: its
# prompt_tokens are the tokens trained on (settle.lua skips a metric named "").
TRAINING_METRICS = ("fine_tune_jobs", "trained_tokens", "", "")
_SCRIPT = with_bucket(Path(__file__).parent / "settle.lua")
DAY_MS = 86_400_000
FIXED_MAX = 10_000  # (key, model, day) entries of the per-ledger memo before it starts over
GROUP_MAX = 64  # settlements per settle.lua call: one call holds Redis for all of its group
RECORD_ARGS = 2 * len(FIELD_NAMES)  # a record's field/value strings in settle.lua's arguments


def usage_prefix(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:usage"


def log_key(tenant: str) -> str:
    return f"{usage_prefix(tenant)}:log"


def day_key(tenant: str, day: str) -> str:
    return f"{usage_prefix(tenant)}:day:{day}"


def day_field(key_id: str, model: str, metric: str) -> str:
    return orjson.dumps([key_id, model, metric]).decode()


@dataclass(frozen=True, slots=True)
class _Fixed:
    """What the settlements of one key, model and UTC day share: one settle.lua call's head."""

    seen_prefix: str  # + a settlement id: its seen-marker
    keys: tuple[str, ...]  # usage log, day hash, key tpm, key leases, tenant tpm, tenant leases
    args: tuple[int | str, ...]  # settle.lua's ARGV 1..9 (the day hash's fields, its expiry, ...)
    records: bool  # its settlements carry usage records (False: limits only)


class Ledger:
    def __init__(
        self,
        redis: Redis,
        settings: MeteringSettings,
        window_s: float,
        pipe: RedisPipe | None = None,
    ) -> None:
        """`pipe`: the connection settlements go out on (shared with admissions in the
        gateway: gateway/redis_pipe.py); default: one of its own."""
        self.redis = redis
        self.pipe = pipe or RedisPipe(redis)
        self.settle = PipeScript(self.pipe, _SCRIPT)
        self.retention_ms = int(settings.retention_days * DAY_MS)
        self.seen_ttl_ms = int(settings.dedupe_window_s * 1000)
        self.window_ms = int(window_s * 1000)
        self.fixed: dict[tuple[str, str, tuple[str, str], int | None, tuple[str, ...]], _Fixed] = {}
        self.id: str | None = None  # identity()'s answer, once asked
        self.log = logging.getLogger("llmaas.metering")

    @property
    def location(self) -> str:
        """Where this ledger's Redis is: host:port/db (or socket path/db), never a password."""
        kwargs = self.redis.connection_pool.connection_kwargs
        host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
        return f"{kwargs.get('path') or f'{host}:{port}'}/{kwargs.get('db', 0)}"

    async def identity(self) -> str:
        """The ledger's id: created by the first gateway that asks, the same for all after it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(LEDGER_ID, secrets.token_hex(8), nx=True)
            pipe.get(LEDGER_ID)
            _, found = await pipe.execute()
        self.id = found.decode() if isinstance(found, bytes) else str(found)
        return self.id

    async def keep_identity(self) -> None:
        """Put the id back if Redis lost it, as a write does (commands()), for a Redis that
        lost its data while nothing is settled: every key gone, every request a 401."""
        if self.id is None:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(LEDGER_ID, self.id, nx=True)
            pipe.get(LEDGER_ID)
            put, held = await pipe.execute()
        self._held(put, held)

    async def close(self) -> None:
        """Close the connection settlements go out on (the gateway's shared one, at shutdown)."""
        await self.pipe.close()

    async def write(self, batch: Sequence[Settlement], *, linger_s: float = 0.0) -> None:
        """Apply every settlement of `batch` (each at most once, ever) in one round trip.
        `linger_s`: how long it may wait to go in the same write as an admission
        (redis_wire.py).

        Raises what Redis raised; the whole batch may then be retried safely.
        """
        if not batch:
            return
        asks_id = self.id is not None  # (commands() then ends with a GET of it)
        commands = self.commands(batch)
        replies = await self.pipe.calls(commands, linger_s=linger_s)
        if any(isinstance(reply, NoScriptError) for reply in replies):  # Redis restarted (or
            await self.settle.load()  # flushed its scripts) since the last call
            replies = await self.pipe.calls(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if asks_id:
            self._held(replies[-2], replies[-1])

    def _held(self, put: object, held: object) -> None:
        """The replies to SET NX and GET of the id. The id Redis holds now is another
        process's if it made one after Redis lost ours and before we put it back. Either
        way Redis lost its data: logged by the process that notices first, once per loss
        (the operator saw every key refused 401 and not a line saying why)."""
        other = isinstance(held, bytes) and held.decode() != self.id
        if put or other:
            self.log.warning(
                "Redis lost its data (ledger id written again): keys, tenants, usage and "
                "files' records are gone; restore Redis's data (docs/deploy.md, Redis)",
                extra={"fields": {"ledger": self.id, "redis": self.location}},
            )
        if other:
            assert isinstance(held, bytes)
            self.id = held.decode()

    def hasten(self, linger_s: float) -> None:
        """A write lingering for company goes within `linger_s` at the latest."""
        self.pipe.hasten(linger_s)

    def commands(self, batch: Sequence[Settlement]) -> list[Command]:
        """What writing `batch` sends: one EVALSHA of settle.lua per group of settlements that
        share a key, model and UTC day (in the batch's order within each, at most GROUP_MAX),
        then the tenants' last write and earliest record (ZADD GT / LT: a clock behind another
        replica's, or a spill file replayed late, never moves them the wrong way)."""
        commands: list[Command] = []
        groups: dict[int, tuple[_Fixed, list[Settlement]]] = {}
        for settlement in batch:
            fixed = self._fixed_of(settlement)
            group = groups.get(id(fixed))
            if group is None:
                group = groups[id(fixed)] = (fixed, [])
            group[1].append(settlement)
            if len(group[1]) == GROUP_MAX:
                commands.append(self._command(*groups.pop(id(fixed))))
        commands += [self._command(fixed, group) for fixed, group in groups.values()]
        first: dict[str, int] = {}
        for s in batch:
            if s.record is not None:
                first[s.tenant] = min(first.get(s.tenant, s.record.time_ms), s.record.time_ms)
        if first:
            now = int(time.time() * 1000)
            commands.append(("ZADD", TENANTS, "GT", *[x for t in first for x in (now, t)]))
            scored = [x for tenant, ms in first.items() for x in (ms, tenant)]
            commands.append(("ZADD", TENANTS_FIRST, "LT", *scored))
        if self.id is not None:  # a Redis that lost its data (restarted empty, flushed) gets
            # the id back: this process's spills, tagged with it, stay this ledger's to replay;
            # and if another process made a new one meanwhile, this one takes it (write())
            commands += [("SET", LEDGER_ID, self.id, "NX"), ("GET", LEDGER_ID)]
        return commands

    def _fixed_of(self, s: Settlement) -> _Fixed:
        record = s.record
        if record is None:
            return self._fixed(s.tenant, s.scope_id, ("", ""), None)
        day = record.time_ms // DAY_MS
        metrics = TRAINING_METRICS if record.route == FINE_TUNE_ROUTE else METRICS
        return self._fixed(s.tenant, s.scope_id, (record.key_id, record.model), day, metrics)

    def _command(self, fixed: _Fixed, group: list[Settlement]) -> Command:
        prefix = fixed.seen_prefix
        keys = [*fixed.keys, *[prefix + s.id for s in group]]
        args = list(fixed.args)
        records = fixed.records
        for s in group:
            limits = s.limits
            if limits is None:
                args += (0, 0, "", 0, 0, 0, 0)
            else:
                args += (1, limits.delta, limits.lease, limits.key_tpm, limits.tenant_tpm)
                args += (limits.key_until_ms, limits.tenant_until_ms)
            if records:
                record = s.record
                assert record is not None  # a group's settlements all carry one, or none does
                args += (record.prompt_tokens, record.completion_tokens, record.cached_tokens)
                args += record.fields()
        return self.settle.command(keys, args)

    def _fixed(
        self,
        tenant: str,
        scope_id: str,
        totals: tuple[str, str],
        day: int | None,
        metrics: tuple[str, ...] = METRICS,
    ) -> _Fixed:
        """What every settlement of this limit scope (`Principal.scope_id`) shares on a UTC day
        (`day`: days since the epoch; `totals`: the record's key id and model, whose daily
        totals it adds to, as `metrics`), made once."""
        found = self.fixed.get((tenant, scope_id, totals, day, metrics))
        if found is not None:
            return found
        (_, key_tpm, key_leases), (_, tenant_tpm, tenant_leases) = scope_keys(tenant, scope_id)
        date = "-" if day is None else day_of(day * DAY_MS)
        # UTC days: epoch ms align to them; the day's totals are kept a retention after it
        expires_at = 0 if day is None else (day + 1) * DAY_MS + self.retention_ms
        made = _Fixed(
            seen_prefix=f"{usage_prefix(tenant)}:seen:",
            keys=(
                log_key(tenant),
                day_key(tenant, date),
                key_tpm,
                key_leases,
                tenant_tpm,
                tenant_leases,
            ),
            args=(
                self.seen_ttl_ms,
                self.window_ms,
                self.retention_ms,
                expires_at,
                *(day_field(*totals, metric) if metric else "" for metric in metrics),
                0 if day is None else RECORD_ARGS,
            ),
            records=day is not None,
        )
        if len(self.fixed) >= FIXED_MAX:
            self.fixed.clear()
        self.fixed[tenant, scope_id, totals, day, metrics] = made
        return made
