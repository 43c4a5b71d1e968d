from __future__ import annotations

from gateway.auth.principal import Limits, Principal
from gateway.limits.control import AdmissionControl
from gateway.metrics import Metrics
from gateway.settings import LimitsSettings


def test_configured_defaults_fill_only_what_records_leave_unset() -> None:
    settings = LimitsSettings.model_validate(
        {"key_defaults": {"rpm": 60, "tpm": 1000}, "tenant_defaults": {"max_concurrency": 8}}
    )
    control = AdmissionControl(None, settings, Metrics())
    caller = Principal(tenant="t", key_id="k", source="api_key", key_limits=Limits(rpm=5))
    merged = control.with_defaults(caller)
    assert merged.key_limits == Limits(rpm=5, tpm=1000, max_concurrency=None)
    assert merged.tenant_limits == Limits(rpm=None, tpm=None, max_concurrency=8)


def test_without_defaults_the_caller_is_unchanged() -> None:
    control = AdmissionControl(None, LimitsSettings(), Metrics())
    caller = Principal(tenant="t", key_id="k", source="api_key")
    assert control.with_defaults(caller) is caller


def test_a_keys_principal_is_given_its_defaults_once() -> None:
    settings = LimitsSettings.model_validate({"key_defaults": {"rpm": 60}})
    control = AdmissionControl(None, settings, Metrics())
    caller = Principal(tenant="t", key_id="k", source="api_key")
    first = control.with_defaults(caller)
    assert first.key_limits == Limits(rpm=60)
    assert control.with_defaults(caller) is first  # the authenticator reuses a key's principal
    other = Principal(tenant="t", key_id="k2", source="api_key", key_limits=Limits(rpm=5))
    assert control.with_defaults(other).key_limits == Limits(rpm=5)  # its own, not the first's


def test_a_jwt_principal_is_not_remembered() -> None:
    settings = LimitsSettings.model_validate({"key_defaults": {"rpm": 60}})
    control = AdmissionControl(None, settings, Metrics())
    caller = Principal(tenant="t", key_id="user", source="jwt")
    assert control.with_defaults(caller).key_limits == Limits(rpm=60)
    assert control.defaulted == {}  # made anew for every request: nothing to reuse
