"""Load signals: every engine's vLLM /metrics, scraped about once a second into `engine.load`.

One background task scrapes all engines concurrently (the registry is re-read every round, so
engines added or removed at run time are followed). A scrape that fails, times out or returns
something unreadable leaves the engine's last load in place with its old `scraped_at`; the
balancer stops trusting a load that has not been refreshed for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import aiohttp

from gateway.routing.engines import Engine, EngineLoad, EngineRegistry

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
_WANTED = (RUNNING, WAITING, KV_USAGE, PREFIX_HITS, PREFIX_QUERIES)
# Sample lines start with one of these; the name must end there ("…_waiting_by_reason" does not).
_PREFIXES = tuple(name + sep for name in _WANTED for sep in ("{", " "))
# Longest wait for one engine's /metrics. vLLM answers in milliseconds, but its API server
# shares the CPU with the engine: on a busy CPU-only box it measured over 1 s at times.
TIMEOUT_S = 2.0


def parse_metrics(text: str, scraped_at: float) -> EngineLoad | None:
    """The load in vLLM's Prometheus text; None if it has none of the wanted samples.

    Series of one name (data-parallel engines, several served names) are added up, except KV
    usage, where the fullest cache counts. Unreadable or non-finite values are skipped.
    """
    sums = dict.fromkeys(_WANTED, 0.0)
    seen = False
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        name, value = _sample(line)
        if value is None:
            continue
        seen = True
        sums[name] = max(sums[name], value) if name == KV_USAGE else sums[name] + value
    if not seen:
        return None
    return EngineLoad(
        running=sums[RUNNING],
        waiting=sums[WAITING],
        kv_usage=sums[KV_USAGE],
        prefix_hits=sums[PREFIX_HITS],
        prefix_queries=sums[PREFIX_QUERIES],
        scraped_at=scraped_at,
    )


def _sample(line: str) -> tuple[str, float | None]:
    """`name{labels} value [timestamp]` → (name, value); label values may hold spaces."""
    brace = line.find("{")
    if brace == -1:
        name, _, rest = line.partition(" ")
    else:
        name, rest = line[:brace], line[line.rfind("}") + 1 :]
    fields = rest.split()
    if not fields:
        return name, None
    try:
        value = float(fields[0])
    except ValueError:
        return name, None
    return name, value if math.isfinite(value) else None


class LoadScraper:
    """Keeps `engine.load` fresh for every engine of the registry while running."""

    def __init__(self, registry: EngineRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        self.log = logging.getLogger("llmaas.routing")
        self._failing: set[str] = set()  # engine URLs whose last scrape failed (logged once)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Its own small session: scrapes never queue behind (or take slots from) requests.
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit_per_host=1)
        )
        self._task = asyncio.create_task(self._run(self._session), name="llmaas-load-scraper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scrape_all(session)
            except Exception:  # a bug here must not stop routing on load for good
                self.log.exception("load scrape round failed")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def scrape_all(self, session: aiohttp.ClientSession) -> None:
        """One round: every engine the registry knows now, concurrently."""
        engines = self.registry.engines()
        await asyncio.gather(*(self.scrape(session, engine) for engine in engines))

    async def scrape(self, session: aiohttp.ClientSession, engine: Engine) -> None:
        try:
            async with session.get(f"{engine.url}/metrics") as resp:
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                text = (await resp.read()).decode("utf-8", "replace")
            load = parse_metrics(text, time.monotonic())
            if load is None:
                raise ValueError("no vllm load metrics in the answer")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if engine.url not in self._failing:
                self._failing.add(engine.url)
                self.log.warning(
                    "load scrape of %s failed: %s", engine.url, str(exc) or type(exc).__name__
                )
            return
        if engine.url in self._failing:
            self._failing.discard(engine.url)
            self.log.info("load scrape of %s works again", engine.url)
        load.own_at_scrape = engine.inflight
        engine.load = load
