"""Validate a request body into a plan: what to generate, how fast, with which faults.

Completion length: with ``max_tokens`` (or chat's ``max_completion_tokens``) the simulator
generates exactly that many tokens and finishes with "length"; without it, it generates
`SimConfig.max_tokens` tokens and finishes with "stop" (a natural end of text). Either is capped
by the context window (``max_model_len - prompt_tokens``), which then finishes with "length".
A prompt is counted up to its ``truncate_prompt_tokens`` (-1: what the context takes), and one
over the context is refused (400, ``input_tokens``) on every route, embeddings too, as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.limits.estimate import is_conversation, positive_int
from gateway.sim.config import SimConfig
from gateway.sim.faults import Faults, FaultSpecError, parse_faults
from gateway.sim.protocol import Kind, detail_error, vllm_error
from gateway.sim.text import Prompt, PromptError, chat_prompt, completion_tokens, text_prompts


class RequestError(Exception):
    """Answer with `status` and vLLM's error body (or FastAPI's `{"detail"}` if `detail`)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, *, detail: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.detail = detail

    def payload(self) -> bytes:
        if self.detail:
            return detail_error(self.message)
        return vllm_error(self.status, self.message, self.param)


@dataclass(frozen=True, slots=True)
class Timing:
    ttft_s: float
    itl_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    kind: Kind
    model: str
    prompts: tuple[Prompt, ...]  # chat: one; completions: one per prompt
    n: int  # choices per prompt
    tokens: int  # tokens per choice
    finish_reason: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    timing: Timing
    faults: Faults

    @property
    def prompt_tokens(self) -> int:
        return sum(prompt.tokens for prompt in self.prompts)

    @property
    def choices(self) -> int:
        return self.n * len(self.prompts)

    def choice_tokens(self) -> list[list[str]]:
        """Every choice's tokens, in choice index order (prompt-major, as vLLM numbers them)."""
        return [
            completion_tokens(prompt.text, self.tokens, choice)
            for prompt in self.prompts
            for choice in range(self.n)
        ]

    def choice_prompt_tokens(self, index: int) -> int:
        """Prompt tokens in the continuous usage of choice `index` (per prompt, like vLLM)."""
        if self.kind == "chat":
            return self.prompt_tokens
        return self.prompts[index // self.n].tokens

    @property
    def needs_watch(self) -> bool:
        """Whether it waits at all (and so must notice a client that goes away meanwhile)."""
        timing, faults = self.timing, self.faults
        return timing.ttft_s > 0 or (timing.itl_s > 0 and self.tokens > 1) or faults.hang


def admit(body: dict[str, Any], config: SimConfig) -> tuple[str, Faults]:
    """The served model name and the faults of a request, or the RequestError to answer."""
    try:
        faults = parse_faults(body.get("sim"))
    except FaultSpecError as exc:
        raise RequestError(400, str(exc), "sim") from exc
    if faults.fail_status is not None:
        message = faults.fail_message or f"Simulated failure ({faults.fail_status})"
        detail = faults.fail_body == "detail"
        raise RequestError(faults.fail_status, message, faults.fail_param, detail=detail)
    model = body.get("model")
    if model is None:
        return config.models[0], faults  # vLLM serves its default model
    if not isinstance(model, str) or model not in config.models:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    return model, faults


def timing(config: SimConfig, faults: Faults) -> Timing:
    ttft = config.ttft_ms if faults.ttft_ms is None else faults.ttft_ms
    itl = config.itl_ms if faults.itl_ms is None else faults.itl_ms
    return Timing(ttft / 1000.0, itl / 1000.0)


def plan_generation(
    kind: Kind, body: dict[str, Any], model: str, faults: Faults, config: SimConfig
) -> Plan:
    prompts = tuple(_truncated(_prompts(kind, body), body, config.max_model_len - 1))
    longest = max(prompt.tokens for prompt in prompts)
    tokens, finish = _length(kind, body, longest, config)
    stream = _flag(body, "stream")
    include_usage, continuous = _stream_options(body, stream)
    return Plan(
        kind=kind,
        model=model,
        prompts=prompts,
        n=_sequences(body),
        tokens=tokens,
        finish_reason=finish,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        timing=timing(config, faults),
        faults=faults,
    )


@dataclass(frozen=True, slots=True)
class EmbeddingPlan:
    model: str
    prompts: tuple[Prompt, ...]
    dim: int
    base64: bool  # encoding_format "base64": little-endian float32, as vLLM and OpenAI send
    timing: Timing
    faults: Faults

    @property
    def prompt_tokens(self) -> int:
        return sum(prompt.tokens for prompt in self.prompts)


def plan_embeddings(
    body: dict[str, Any], model: str, faults: Faults, config: SimConfig
) -> EmbeddingPlan:
    try:
        prompts = tuple(_truncated(_embedding_prompts(body), body, config.max_model_len))
    except PromptError as exc:
        raise RequestError(400, str(exc), exc.param) from exc
    longest = max(prompt.tokens for prompt in prompts)
    if longest > config.max_model_len:
        raise _over_context(longest, config)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(400, "encoding_format: expected 'float' or 'base64'", "encoding_format")
    dim = _positive_int(body, "dimensions") or config.embedding_dim
    if dim > config.embedding_dim:  # vLLM 0.32's words (pooling_params.py), without a param
        raise RequestError(
            400,
            f"Model {model!r} only supports dimensions in range [1, {config.embedding_dim}], "
            f"got {dim}.",
        )
    return EmbeddingPlan(model, prompts, dim, encoding == "base64", timing(config, faults), faults)


def _embedding_prompts(body: dict[str, Any]) -> list[Prompt]:
    """`input`'s prompts; or one conversation, in `messages` (without `input`) or in `input`,
    rendered as a chat's prompt (vLLM's EmbeddingChatRequest / EmbeddingChatInputRequest)."""
    value = body.get("input")
    if "messages" in body and "input" not in body:
        return [chat_prompt(body["messages"])]
    if is_conversation(value):
        return [chat_prompt(value)]
    return text_prompts(value, "input")


def _prompts(kind: Kind, body: dict[str, Any]) -> list[Prompt]:
    try:
        if kind == "chat":
            return [chat_prompt(body.get("messages"))]
        return text_prompts(body.get("prompt"), "prompt")
    except PromptError as exc:
        raise RequestError(400, str(exc), exc.param) from exc


def _length(
    kind: Kind, body: dict[str, Any], prompt_tokens: int, config: SimConfig
) -> tuple[int, str]:
    """The tokens to generate and the finish reason, as vLLM 0.32 decides them: a prompt over
    the context refused (`param` input_tokens, which the gateway names by the prompt's field),
    a max_tokens over the whole context refused, any other clamped to the room left."""
    room = config.max_model_len - prompt_tokens
    if room < 1:
        raise _over_context(prompt_tokens, config)
    field = (
        "max_completion_tokens"
        if kind == "chat" and "max_completion_tokens" in body
        else "max_tokens"
    )
    requested = _positive_int(body, field)
    if requested is None:
        return (config.max_tokens, "stop") if config.max_tokens <= room else (room, "length")
    if requested > config.max_model_len:
        raise RequestError(
            400,
            f"{field}={requested} cannot be greater than max_model_len={config.max_model_len}."
            " Please request fewer output tokens.",
            field,
        )
    return min(requested, room), "length"


def _over_context(prompt_tokens: int, config: SimConfig) -> RequestError:
    return RequestError(
        400,
        f"This model's maximum context length is {config.max_model_len} tokens. However, "
        f"your prompt contains {prompt_tokens} input tokens, which exceeds this limit even"
        " without any output tokens. Please reduce the length of the input prompt.",
        "input_tokens",
    )


def _truncated(prompts: list[Prompt], body: dict[str, Any], most: int) -> list[Prompt]:
    """vLLM's `truncate_prompt_tokens`: k keeps k tokens of each prompt, -1 the `most` the
    context takes (a generation keeps a token of it for its output)."""
    value = body.get("truncate_prompt_tokens")
    keep = most if value == -1 and not isinstance(value, bool) else positive_int(value)
    if keep is None:
        return prompts
    return [Prompt(prompt.text, min(prompt.tokens, keep)) for prompt in prompts]


def _stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options: expected an object", "stream_options")
    if not stream:
        message = "Stream options can only be defined when `stream=True`."
        raise RequestError(400, message, "stream_options")
    include = _flag(options, "include_usage")
    return include, include and _flag(options, "continuous_usage_stats")


# vLLM 0.32's bound on n (VLLM_MAX_N_SEQUENCES' default, sampling_params.py): past it a 400
# at once, where generating them took the simulator seconds and hundreds of MB.
MAX_N = 16384


def _sequences(body: dict[str, Any]) -> int:
    n = _positive_int(body, "n") or 1
    if n > MAX_N:  # vLLM's words, without a param
        raise RequestError(
            400,
            f"n must be at most {MAX_N}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.",
        )
    return n


def _positive_int(body: dict[str, Any], field: str) -> int | None:
    """As vLLM's pydantic reads an int (limits/estimate.py models it for the gateway): "20"
    and 20.0 are 20 (not 20.5, not true)."""
    value = body.get(field)
    if value is None:
        return None
    number = positive_int(value)
    if number is None:
        raise RequestError(400, f"{field}: expected an integer >= 1, got {value!r}", field)
    return number


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"{field}: expected true or false", field)
    return value
