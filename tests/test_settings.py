from dataclasses import fields
from pathlib import Path

import pytest

from choreo.config.settings import BOUNDS, Settings, SettingsError, plain_number

CONFIGURATION_DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_defaults_and_environment():
    s = Settings.from_env({"CHOREO_BATCH_SIZE": "20", "REDIS_URL": "redis://h:1/2"})
    assert (s.batch_size, s.url, s.max_deliveries) == (20, "redis://h:1/2", 5)
    assert Settings.from_env({}).redis_url is None          # the demo's embedded default
    assert Settings.from_env({}).url == "redis://localhost:6379/0"


def test_a_service_can_have_its_own_values():
    env = {"CHOREO_MAX_DELIVERIES": "5", "CHOREO_MAX_DELIVERIES_PAYMENT": "12"}
    assert Settings.from_env(env, service="payment").max_deliveries == 12
    assert Settings.from_env(env, service="inventory").max_deliveries == 5
    assert Settings.from_env(env).max_deliveries == 5


def test_flags_win_over_the_environment():
    assert Settings.from_env({"CHOREO_LOG_FORMAT": "json"}, log_format="plain").log_format == "plain"
    assert Settings.from_env({"CHOREO_LOG_FORMAT": "json"}, log_format=None).log_format == "json"


@pytest.mark.parametrize("env", [{"CHOREO_BATCH_SIZE": "many"}, {"CHOREO_BLOCK_MS": "5000"},
                                 {"CHOREO_LOG_FORMAT": "xml"}, {"CHOREO_RETRY_BASE_MS": "0"},
                                 {"CHOREO_MAX_DELIVERIES_SHIPPING": "0"}])
def test_unusable_values_are_refused_with_the_variable_named(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env, service="shipping")


@pytest.mark.parametrize("name, raw, says", [
    ("CHOREO_SEEN_TTL_S", "-5", "CHOREO_SEEN_TTL_S must be 60..315360000, got -5"),
    ("CHOREO_SEEN_TTL_S", "0", "CHOREO_SEEN_TTL_S must be 60..315360000, got 0"),
    ("CHOREO_CLAIM_IDLE_MS", "10", "CHOREO_CLAIM_IDLE_MS must be 100..86400000, got 10"),
    ("CHOREO_CLAIM_EVERY_S", "nan", "CHOREO_CLAIM_EVERY_S must be 0.01..3600, got nan"),
    ("CHOREO_CLAIM_EVERY_S", "0", "CHOREO_CLAIM_EVERY_S must be 0.01..3600, got 0"),
    ("CHOREO_TRIM_KEEP_SECONDS", "inf", "CHOREO_TRIM_KEEP_SECONDS must be 0..315360000, got inf"),
    ("CHOREO_TRIM_KEEP_SECONDS", "-1", "CHOREO_TRIM_KEEP_SECONDS must be 0..315360000, got -1"),
    ("CHOREO_TRIM_KEEP_ENTRIES", "-1", "CHOREO_TRIM_KEEP_ENTRIES must be 0..1000000000, got -1"),
    ("CHOREO_ORDER_DEADLINE_S", "1e300", "CHOREO_ORDER_DEADLINE_S must be 0..2592000, got 1e+300"),
    ("CHOREO_ORDER_DEADLINE_S", "-inf", "CHOREO_ORDER_DEADLINE_S must be 0..2592000, got -inf"),
    ("CHOREO_RECONNECT_MAX_S", "-1", "CHOREO_RECONNECT_MAX_S must be 0.1..300, got -1"),
    ("CHOREO_HOUSEKEEPING_EVERY_S", "0", "CHOREO_HOUSEKEEPING_EVERY_S must be 0.1..86400, got 0"),
    ("CHOREO_STALE_CONSUMER_MS", "-1", "CHOREO_STALE_CONSUMER_MS must be 1000..2592000000, got -1"),
    ("CHOREO_MAX_ENTRY_BYTES", "100", "CHOREO_MAX_ENTRY_BYTES must be 8192..16777216, got 100"),
    ("CHOREO_MAX_DELIVERIES", "0", "CHOREO_MAX_DELIVERIES must be 1..1000, got 0"),
    ("CHOREO_RETRY_MAX_MS", "99999999999", "CHOREO_RETRY_MAX_MS must be 1..3600000, got 99999999999"),
    ("CHOREO_COMMIT_DELAY_MS", "-1", "CHOREO_COMMIT_DELAY_MS must be 0..60000, got -1"),
    ("CHOREO_DLQ_MAX_ENTRIES", "0", "CHOREO_DLQ_MAX_ENTRIES must be 1..1000000000, got 0"),
    ("CHOREO_SEEN_TTL_S_SHIPPING", "-5", "CHOREO_SEEN_TTL_S_SHIPPING must be 60..315360000, got -5"),
])
def test_nonsense_is_refused_in_one_line_naming_the_variable(name, raw, says):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: raw}, service="shipping")
    assert str(refused.value) == says


def test_retry_base_above_its_cap_is_refused():
    with pytest.raises(SettingsError, match="CHOREO_RETRY_BASE_MS .5000. must not exceed CHOREO_RETRY_MAX_MS .100."):
        Settings.from_env({"CHOREO_RETRY_BASE_MS": "5000", "CHOREO_RETRY_MAX_MS": "100"})


def test_every_number_is_bounded_and_every_default_is_within_its_bounds():
    numbers = {f.name for f in fields(Settings) if type(f.default) in (int, float)}
    assert numbers == set(BOUNDS)
    defaults = Settings()
    for name, (least, most) in BOUNDS.items():
        assert least <= getattr(defaults, name) <= most, name
    for name, (least, most) in BOUNDS.items():      # the bounds themselves are accepted
        for edge in (least, most):
            Settings.from_env({"CHOREO_" + name.upper(): str(edge),
                               "CHOREO_RETRY_BASE_MS": "1", "CHOREO_RETRY_MAX_MS": "3600000"})


def test_the_configuration_doc_states_every_bound():
    text = " ".join(CONFIGURATION_DOC.read_text().split())
    for name, (least, most) in BOUNDS.items():
        assert f"`{name.upper()}` {plain_number(least)}..{plain_number(most)}" in text, name
