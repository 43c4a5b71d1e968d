"""The body of POST /v1/fine_tuning/jobs, as OpenAI's SDK sends it: hyperparameters "auto" or
within their ranges, OpenAI's `method` form, and the fields not supported here refused by
name (validation_file, integrations)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.finetune.jobs import SUFFIX_PATTERN


def _auto_or(kind: type, low: float, high: float) -> AfterValidator:
    """ "auto", or a number of `kind` within [low, high] (one message, naming the range)."""
    noun = "an integer" if kind is int else "a number"

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and ok_type and float(value).is_integer():
            value = int(value)
        if not ok_type or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise ValueError(f"must be 'auto' or {noun} from {low:g} to {high:g}")
        return value

    return AfterValidator(check)


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[Any, _auto_or(int, 1, 50)] = "auto"
    batch_size: Annotated[Any, _auto_or(int, 1, 256)] = "auto"
    learning_rate_multiplier: Annotated[Any, _auto_or(float, 1e-6, 100)] = "auto"
    lora_rank: Annotated[Any, _auto_or(int, 1, 256)] = "auto"


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"]
    supervised: SupervisedIn | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: None = None  # not supported yet: a value is refused, naming the field
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: Annotated[str, Field(pattern=SUFFIX_PATTERN)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = None
    integrations: Annotated[list[Any], Field(max_length=0)] | None = None  # none supported
