import pytest

from config.settings import Settings, SettingsError


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
