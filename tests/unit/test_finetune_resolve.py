"""What "auto" hyperparameters become, and fine-tuned model names and their owners."""

from __future__ import annotations

import pytest

from gateway.auth.principal import Principal
from gateway.finetune.jobs import Hyperparameters
from gateway.finetune.names import base_of, fine_tuned_name, owner_of
from gateway.finetune.resolve import resolve
from gateway.finetune_settings import FineTuningSettings

SETTINGS = FineTuningSettings(learning_rate=0.002, lora_rank=4)


@pytest.mark.parametrize(
    ("examples", "batch", "epochs"),
    [(1, 1, 10), (4, 1, 8), (30, 1, 1), (64, 2, 1), (10_000, 8, 1)],
)
def test_auto_gives_about_thirty_steps_for_small_sets(
    examples: int, batch: int, epochs: int
) -> None:
    resolved, rate = resolve(Hyperparameters(), examples, SETTINGS)
    assert (resolved.batch_size, resolved.n_epochs) == (batch, epochs)
    assert (resolved.learning_rate_multiplier, resolved.lora_rank, rate) == (1.0, 4, 0.002)


def test_given_values_are_kept() -> None:
    given = Hyperparameters(n_epochs=3, batch_size=2, learning_rate_multiplier=0.5, lora_rank=8)
    resolved, rate = resolve(given, 4, SETTINGS)
    assert resolved == given
    assert rate == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("base", "tenant", "suffix"),
    [("smollm2", "acme", "demo"), ("org/model:v2", "t.1", None), ("a:b:c", "x", "s-1")],
)
def test_the_owner_is_read_back_from_the_name(base: str, tenant: str, suffix: str | None) -> None:
    name = fine_tuned_name(base, tenant, suffix, "ftjob-0123456789abcdef01234567")
    assert name.startswith(f"ft:{base}:{tenant}:")
    assert owner_of(name) == tenant
    assert base_of(name) == base


@pytest.mark.parametrize("name", ["ft:", "ft:a:b", "ft::acme:s:id", "ft:acme"])
def test_malformed_fine_tuned_names_belong_to_nobody(name: str) -> None:
    assert owner_of(name) == ""
    assert base_of(name) is None
    caller = Principal(tenant="acme", key_id="k", source="api_key")
    assert not caller.may_use(name)


def test_only_the_owner_may_use_a_fine_tuned_model_whatever_its_allow_list() -> None:
    name = fine_tuned_name("base", "acme", "s", "ftjob-" + "a" * 24)
    everything = Principal(tenant="other", key_id="k", source="api_key")
    listed = Principal(tenant="other", key_id="k", source="api_key", key_models=frozenset([name]))
    owner = Principal(tenant="acme", key_id="k", source="api_key")
    assert (everything.may_use(name), listed.may_use(name), owner.may_use(name)) == (
        False,
        False,
        True,
    )
    assert owner_of("smollm2") is None


def test_a_list_that_allows_the_base_model_allows_the_tenants_fine_tuned_models_of_it() -> None:
    """A key or tenant restricted to a base model fine-tunes it, then uses what it made: the
    model's name cannot be on a list before its job ends."""
    name = fine_tuned_name("base", "acme", "s", "ftjob-" + "a" * 24)
    other = fine_tuned_name("other-base", "acme", "s", "ftjob-" + "b" * 24)

    def caller(key: set[str] | None, tenant: set[str] | None, who: str = "acme") -> Principal:
        key_models = None if key is None else frozenset(key)
        tenant_models = None if tenant is None else frozenset(tenant)
        return Principal(who, "k", "api_key", key_models=key_models, tenant_models=tenant_models)

    assert caller({"base"}, None).may_use(name)
    assert caller(None, {"base"}).may_use(name)
    assert caller({"base"}, {"base", "x"}).may_use(name)
    assert caller({name}, None).may_use(name)  # listed by its own name
    assert not caller({"base"}, None).may_use(other)  # another base model's
    assert not caller({"base"}, {"x"}).may_use(name)  # the tenant's list does not allow it
    assert not caller(set(), None).may_use(name)  # an empty list allows nothing
    assert not caller({"base"}, None, who="other").may_use(name)  # another tenant's
    assert base_of("smollm2") is None
