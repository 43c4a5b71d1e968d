"""The gateway's one Settings object: YAML file, then LLMAAS_* environment variables on top."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.finetune_settings import FilesSettings, FineTuningSettings
from gateway.jwt_settings import JwtSettings
from gateway.netutil import media_host
from gateway.routing.entries import StaticEntry, parse_entry
from gateway.settings_checks import wrong_across_fields
from gateway.settings_section import HomePath, Section


def _engine_entry(entry: str) -> str:
    parsed = parse_entry(entry)  # a ValueError says what is wrong, the path which entry
    return parsed.url if isinstance(parsed, StaticEntry) else parsed.text


class ModelRoute(Section):
    """A model name clients send, and the vLLM engines that serve it: base URLs without /v1, or
    `dns://name:port` for every A/AAAA record of name (e.g. a Kubernetes headless Service)."""

    name: str = Field(min_length=1)
    engines: list[Annotated[str, AfterValidator(_engine_entry)]] = Field(min_length=1)
    # The engines' max_model_len; caps the tokens reserved for a request without max_tokens.
    # Unset: learned from the engines' /v1/models (vLLM's max_model_len).
    context_length: int | None = Field(default=None, ge=1)


class RoutingSettings(Section):
    # prefix_affinity: the engine whose prefix cache likely holds the prompt's start, within
    # the load bound (bench/README.md, "Routing", measures the three).
    strategy: Literal["round_robin", "least_loaded", "prefix_affinity"] = "prefix_affinity"
    # How often every engine's /metrics is read (its queue and KV-cache usage).
    scrape_interval_s: float = Field(default=1.0, gt=0)
    # prefix_affinity sends a request to an engine only while that engine's load (requests in
    # flight or queued) stays within this factor of the pool's mean load, plus one request.
    load_bound: float = Field(default=1.25, ge=1.0)
    # Overload shedding: an engine whose waiting queue (vllm:num_requests_waiting, plus what
    # this replica sent it since the scrape) is at or above this takes no new request; when no
    # engine of the model is below it, requests are refused with 503 engines_overloaded and
    # Retry-After (the scrape interval, at least 1 s) instead of queueing without limit.
    # 256 is vLLM's default batch (max_num_seqs): a new request would wait a whole batch's
    # generation before its first token. None: never shed. (0 would refuse every request, even
    # with every queue empty: refused, so that nobody takes it for "never queue".)
    max_waiting_per_engine: int | None = Field(default=256, ge=1)
    # How often dns:// engine entries are resolved again (engines join and leave the pools).
    dns_refresh_s: float = Field(default=10.0, gt=0)
    # How often every engine's /v1/models is read (served models, LoRA adapters, max_model_len).
    models_refresh_s: float = Field(default=10.0, gt=0)
    # A model an engine lists that the config does not name is routed to the engines listing it
    # (LoRA adapters loaded at run time). Keys without a models allow-list may use it too.
    learn_models: bool = True
    # Active checks: GET /health on every engine this often; each check (and each background
    # request: DNS, /v1/models) gives up after health_timeout_s.
    health_interval_s: float = Field(default=2.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    # Passive ejection: a refused connection ejects an engine at once, failures_to_eject
    # consecutive other failures (5xx, timeouts, failed /health) too. It is ejected for
    # eject_base_s, doubling with each ejection up to eject_max_s, and comes back only once
    # /health answers 200 after that.
    failures_to_eject: int = Field(default=3, ge=1)
    eject_base_s: float = Field(default=1.0, gt=0)
    eject_max_s: float = Field(default=60.0, gt=0)


class ScopeLimits(Section):
    """Default limits of one scope, used where a key's or tenant's record sets none."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class LimitsSettings(Section):
    # Redis unreachable (or slower than timeout_s) at admission: closed answers 503, open
    # admits (and counts it). Either way an admission given up on is released in the background.
    failure_mode: Literal["open", "closed"] = "closed"
    # Tokens reserved for the completion when a request sets no max_tokens; settled later.
    default_max_tokens: int = Field(default=1024, ge=1)
    # Most prompts in one completions `prompt` / embeddings `input` batch; more is a 400.
    # 2048 is OpenAI's own cap on embeddings input, so clients already split batches to fit.
    max_prompts_per_request: int = Field(default=2048, ge=1)
    # A concurrency slot is a lease: it frees itself this long after a gateway died holding it
    # (its key is 429 "too many in flight" until then). Live requests renew theirs every
    # ttl / 3, so this bounds only a dead gateway's slots, and a Redis outage's length.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    # The "minute" of rpm and tpm. Keep 60; tests shorten it to check window behaviour quickly.
    window_s: float = Field(default=60.0, gt=0)
    # Longest wait for Redis at admission (a late reply, a free pooled connection) before
    # failure_mode decides. Time this process is too busy to read a reply does not count, up
    # to 10 x timeout_s in all. An unreachable Redis (refused, reset) decides at once.
    timeout_s: float = Field(default=1.0, gt=0)
    # A busy key's admission fetches up to this many more in the same Redis call, for its next
    # requests in this replica (no round trip for them), while the key is far from its limits
    # (gateway/limits/prefetch.py). 0: every request asks Redis.
    prefetch_max: int = Field(default=128, ge=0)
    # What is fetched and not used within this long is given back. Kept below lease_ttl_s / 3
    # and window_s / 20 (an rpm entry bears the time it was fetched).
    prefetch_ttl_s: float = Field(default=1.0, gt=0)
    # Applied where a key's (or tenant's) record has no value; unset here means no limit.
    key_defaults: ScopeLimits = Field(default_factory=ScopeLimits)
    tenant_defaults: ScopeLimits = Field(default_factory=ScopeLimits)


class UpstreamSettings(Section):
    """Timeouts for talking to engines, in seconds."""

    connect_timeout_s: float = Field(default=5.0, gt=0)
    # A non-streaming answer: the wait for its headers, then for the whole of it (504; a
    # non-streaming request is read from the engine as a stream, so tokens do not stretch it).
    response_timeout_s: float = Field(default=600.0, gt=0)
    # A stream's longest silence: before its headers (504), then between two chunks (cut with
    # an error frame and [DONE]).
    stream_idle_timeout_s: float = Field(default=600.0, gt=0)
    # Longest wait for one write to the client to be taken (a client that stops reading):
    # past it the response is cut, the engine request aborted and billed as a disconnect.
    write_timeout_s: float = Field(default=30.0, gt=0)
    # Requests this replica has open to engines at once, in all and per engine. Past either the
    # gateway answers 503 gateway_busy with Retry-After: its own saturation, not the engines'
    # (no engine is marked down for it, and nothing waits for a pooled connection).
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_engine: int = Field(default=256, ge=1)
    # Engines one request may be sent to: a refused connection or a 5xx answer before any byte
    # reached the client tries the next healthy engine of the model, up to this many in all.
    max_attempts: int = Field(default=3, ge=1)


def _default_spill_dir() -> Path:
    return Path.home() / ".local" / "state" / "llmaas" / "usage-spill"


class MeteringSettings(Section):
    """The usage ledger (on whenever Redis is configured)."""

    # Records and daily totals are kept this long (a billing month with margin), then dropped.
    retention_days: float = Field(default=35.0, gt=0)
    # A settlement retried within this window (lost reply, Redis restart, spill replay) is
    # applied once. Later than that it would count twice, so keep it above any outage.
    dedupe_window_s: float = Field(default=7 * 86400.0, gt=0)
    # Longest wait for Redis when settling in the request's task; after it, the retry queue.
    write_timeout_s: float = Field(default=0.5, gt=0)
    # Settlements held in memory while Redis is unreachable; beyond it they go to spill files.
    queue_max: int = Field(default=10_000, ge=1)
    # Where settlements that Redis could not take are kept across restarts (replayed on start).
    # In Kubernetes, mount a volume here that outlives the pod. Files name their ledger (the id
    # in Redis at llmaas:ledger:id); a gateway replays only its own ledger's and reports others.
    # Stored responses' homes waiting for Redis at shutdown go to its `response-homes` folder.
    spill_dir: HomePath = Field(default_factory=_default_spill_dir)
    # On shutdown, how long to keep trying Redis before spilling what is left.
    flush_timeout_s: float = Field(default=10.0, ge=0)
    retry_max_interval_s: float = Field(default=5.0, gt=0)


class AuthSettings(Section):
    # false: every request acts as the tenant "anonymous" (a closed network, tests); say so loudly.
    required: bool = True
    cache_ttl_s: float = Field(default=30.0, gt=0)  # upper bound on staleness if pub/sub breaks
    # While this process cannot read Redis, a key or tenant it has cached answers from its last
    # record for this long past cache_ttl_s (0: a 503 auth_store_unavailable at once). It is
    # also how long a key revoked through another replica still works on this one if only this
    # one is cut off from Redis.
    stale_max_s: float = Field(default=300.0, ge=0)
    # Records (and briefly, unknown ids) cached per process and kind; least recently used go first.
    cache_max_entries: int = Field(default=10_000, ge=1)
    # More than `failure_limit` 401s from one peer address within `failure_window_s`: its further
    # requests get 429 without touching Redis. Per process; the peer is the TCP peer (a proxy in
    # front makes all its clients one peer). At most `failure_max_clients` peers are tracked.
    failure_limit: int = Field(default=20, ge=1)
    failure_window_s: float = Field(default=10.0, gt=0)
    failure_max_clients: int = Field(default=10_000, ge=1)
    jwt: JwtSettings = Field(default_factory=JwtSettings)


class ResponsesSettings(Section):
    """The Responses API's stored responses (each lives in the memory of the engine that made
    it; the gateway remembers which engine, per tenant: gateway/api/response_homes.py)."""

    # How long a response id stays routable (to its engine) after it was made.
    ttl_s: float = Field(default=7 * 86400.0, gt=0)
    # Without Redis: ids remembered in this process at most (the oldest are forgotten first).
    # With Redis: ids kept in this process while Redis cannot take them, at most.
    local_max_entries: int = Field(default=100_000, ge=1)


class RequestPolicySettings(Section):
    """What a tenant may send to the engines (gateway/api/policy.py)."""

    # Hosts vLLM may fetch media URLs from (https only, public addresses only) for tenants
    # without their own list. Empty: no remote media. List only hosts that never redirect:
    # the engine follows redirects unless run with VLLM_MEDIA_URL_ALLOW_REDIRECTS=0.
    media_hosts: list[str] = Field(default_factory=list)
    max_data_url_bytes: int = Field(default=8 * 1024 * 1024, ge=0)  # per data: URL or base64
    max_schema_bytes: int = Field(default=64 * 1024, ge=1)  # structured output, serialised
    max_logit_bias: int = Field(default=300, ge=0)  # entries
    max_stop: int = Field(default=16, ge=0)  # stop sequences (and bad_words)
    # False: requests that make the engines compute prompt logprobs (`prompt_logprobs`, `echo`
    # with logprobs) are a 400: vLLM's CPU build with LoRA crashes on them (`llmaas up` sets
    # it; gateway/api/prompt_logprobs.py).
    prompt_logprobs: bool = True

    @field_validator("media_hosts")
    @classmethod
    def _lower_case(cls, hosts: list[str]) -> list[str]:
        return [media_host(h) for h in hosts if h.strip()]


def _origin(origin: str) -> str:
    if origin == "*":
        return origin
    scheme, sep, host = origin.partition("://")
    if not (scheme and sep and host) or "/" in host or origin != origin.strip():
        raise ValueError(
            "not an origin: scheme://host[:port] (https://app.example.com), no path, or '*'"
        )
    return origin.lower()  # as browsers send it


class CorsSettings(Section):
    """Web pages that may call the API from a browser (CORS; gateway/api/cors.py)."""

    # Origins (scheme://host[:port]) whose pages may call the API; "*": every origin (what
    # OpenAI's API and vLLM answer; keys travel in the Authorization header, never cookies);
    # []: none (no CORS header, preflights refused with 405).
    allow_origins: list[Annotated[str, AfterValidator(_origin)]] = Field(default=["*"])
    max_age_s: int = Field(default=600, ge=0)  # how long a browser may reuse a preflight


_DATABASE = re.compile(r"/?[0-9]*")  # a URL's path as redis-py reads a database: "", "/", "/3"


def _wrong_redis_url(url: str) -> str | None:
    """What is wrong with `url` as a Redis URL, if anything, said without quoting it (it may
    hold a password). A database that is not a number (/db3) redis-py ignores, and used
    database 0: maybe another application's data."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:  # (the message would quote a piece of the password)
        return "not a Redis URL: a port is a number"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "not a Redis URL: it begins redis://, rediss:// or unix://"
    path = "" if parts.scheme == "unix" else parts.path  # (unix://: the socket's path)
    given = parse_qs(parts.query).get("db", [])
    if not _DATABASE.fullmatch(path) or not all(_DATABASE.fullmatch(db) for db in given):
        return "its database is not a number: one goes after the port (redis://host:6379/3)"
    return None


class Settings(BaseSettings):
    # LLMAAS_ROUTING__MAX_WAITING_PER_ENGINE=null: None, as `null` in the file.
    model_config = SettingsConfigDict(
        env_prefix="LLMAAS_", env_nested_delimiter="__", extra="forbid", env_parse_none_str="null"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    redis_url: str | None = None
    # LLMAAS_REDIS_PASSWORD: used instead of any password in redis_url, as it is (a managed
    # Redis's key may hold / + = @, which a URL would need percent-encoded).
    redis_password: str | None = None
    redis_timeout_s: float = Field(default=0.5, gt=0)  # every Redis call; the gateway never hangs
    redis_max_connections: int = Field(default=128, ge=1)  # per process; more callers wait
    admin_token: str | None = None
    # LLMAAS_METRICS_TOKEN: a second bearer token for /metrics and /readyz's detail only, so
    # Prometheus need not hold the admin token (which is accepted there too).
    metrics_token: str | None = None
    key_pepper: str | None = None  # LLMAAS_KEY_PEPPER: HMAC key under which key secrets are hashed
    dev_mode: bool = False
    # Above request_policy.max_data_url_bytes (8 MiB), which a request's inline image must
    # also fit in.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Requests under /v1 this process serves at once, at every stage (body, auth, admission,
    # engine). Past it: 503 gateway_busy with Retry-After at once, never queued. It bounds what
    # upstream.max_connections does not: requests before they reach an engine. The default
    # leaves upstream.max_connections (1000) as much room again for requests not yet sent.
    max_inflight_requests: int = Field(default=2000, ge=1)
    # The bytes of those requests' bodies held at once (as declared, or as received without a
    # length; uploads, streamed to disk, count none). A request holds 5-10 times its body in
    # memory as it is parsed and sent on: 64 MiB of bodies is up to ~640 MiB. Past it: 503
    # gateway_busy; one request alone always passes.
    max_inflight_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    # Probes answered well (/healthz, /readyz, /metrics: 2xx/3xx) in the access log too. Off:
    # a kubelet and a Prometheus add thousands of lines an hour that say nothing.
    access_log_probes: bool = False
    # On SIGTERM: stop accepting, let requests in flight finish this long, then cancel them.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # A client connection idle this long is closed. Longer than the idle timeouts of the load
    # balancers and clients in front (AWS ALB 60 s, httpx 5 s): the side that closes first must
    # be the client's, or a request written as the gateway closes fails (uvicorn's own default,
    # 5 s, is shorter than most). So is one that has not sent a whole request head within it
    # (gateway/http_protocol.py), however many bytes of it came.
    keep_alive_s: float = Field(default=75.0, gt=0)
    models: list[ModelRoute] = Field(default_factory=list)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    metering: MeteringSettings = Field(default_factory=MeteringSettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)
    request_policy: RequestPolicySettings = Field(default_factory=RequestPolicySettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    fine_tuning: FineTuningSettings = Field(default_factory=FineTuningSettings)

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, url: str | None) -> str | None:
        wrong = None if url is None else _wrong_redis_url(url)
        if wrong is not None:
            raise ValueError(
                f"{wrong}. A password with / @ # ? or % in it goes in redis_password "
                "(LLMAAS_REDIS_PASSWORD), or percent-encoded in the URL"
            )
        return url

    @model_validator(mode="after")
    def _across_fields(self) -> Settings:
        """Every check across fields (settings_checks.py), each wrong one said on its own line
        (one per check: pydantic stops at the first validator that raises, and a config with
        three such mistakes took three runs to mend; found by review). In dev mode a missing
        admin token is made up here: `llmaas up` prints it."""
        if self.dev_mode and self.admin_token is None:
            self.admin_token = secrets.token_urlsafe(24)
        wrong = wrong_across_fields(self)
        if wrong:
            raise ValueError("\n".join(wrong))  # (split into lines: settings_load)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over values passed in (which come from the YAML file).
        return env_settings, init_settings
