"""Settings: defaults < TOML file < environment < flags, with loud errors."""

from __future__ import annotations

import os

import pytest

from agents.config import (
    DEFAULT_STATE_DIR,
    ConfigError,
    load_config,
    parse_duration,
    parse_size,
)


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_defaults():
    config = load_config({}, environ={})
    assert config.state_dir == DEFAULT_STATE_DIR
    assert config.effective_interval() == 10.0
    assert config.effective_batch_size() == 3
    assert config.buffer_max_age == 86400.0
    assert (config.backoff_initial, config.backoff_max) == (1.0, 300.0)
    assert config.sync == "normal"
    assert config.effective_models_dir == f"{DEFAULT_STATE_DIR}/models"


def test_file_then_env_then_flags(tmp_path):
    path = write(
        tmp_path, 'interval = "30s"\nbatch_size = 5\nbuffer_max_bytes = "1MiB"\nsync = "full"\n'
    )
    env = {"EDGEFLEET_AGENT_BATCH_SIZE": "7", "EDGEFLEET_AGENT_BUFFER_MAX_BYTES": "2MiB"}
    config = load_config({"buffer_max_bytes": "4MiB", "batch_size": None}, path, environ=env)
    assert config.interval == 30.0  # file
    assert config.sync == "full"  # file
    assert config.batch_size == 7  # env beats file; an absent flag (None) changes nothing
    assert config.buffer_max_bytes == 4 * 2**20  # flag beats env
    assert config.sources == {
        "interval": "file",
        "sync": "file",
        "batch_size": "env",
        "buffer_max_bytes": "flag",
    }


def test_config_file_from_the_environment_and_an_agent_table(tmp_path):
    path = write(tmp_path, '[agent]\nstate_dir = "/srv/agent"\n')
    config = load_config({}, environ={"EDGEFLEET_AGENT_CONFIG": path})
    assert config.state_dir == "/srv/agent"
    assert config.config_file == path


def test_state_dir_from_the_environment():
    config = load_config({}, environ={"EDGEFLEET_AGENT_STATE_DIR": "/tmp/x"})
    assert config.state_dir == "/tmp/x"


def test_server_values_apply_unless_set_locally():
    server = {"telemetry_interval_s": 30, "batch_size": 6}
    config = load_config({}, environ={})
    assert config.effective_interval(server) == 30.0
    assert config.effective_batch_size(server) == 6
    local = load_config({"interval": "5s"}, environ={})
    assert local.effective_interval(server) == 5.0
    assert config.effective_interval({"telemetry_interval_s": "junk"}) == 10.0


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"interval": "ten"}, {}, "option --interval"),
        ({}, {"EDGEFLEET_AGENT_BATCH_SIZE": "0"}, "environment EDGEFLEET_AGENT_BATCH_SIZE"),
        ({"sync": "sometimes"}, {}, "must be one of normal, full"),
        ({"buffer_max_bytes": "12 parsecs"}, {}, "unknown size unit"),
        ({"backoff_initial": "10s", "backoff_max": "1s"}, {}, "backoff_max must be >="),
    ],
)
def test_bad_values_fail_loudly_naming_their_source(flags, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(flags, environ=env)


def test_unknown_or_unreadable_config_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting.*intervall"):
        load_config({}, write(tmp_path, "intervall = 5\n"), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, write(tmp_path, "interval = = 5\n"), environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, str(tmp_path / "missing.toml"), environ={})


def test_units():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("5m") == 300
    assert parse_duration("24h") == 86400
    assert parse_duration(7) == 7.0
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("1GB") == 10**9
    assert parse_size("32M") == 32 * 2**20
    with pytest.raises(ValueError):
        parse_duration("-1s")


def test_deployment_settings_keep_their_environment_names(tmp_path, monkeypatch):
    """The deploy_* settings: defaults, the EDGEFLEET_AGENT_DEPLOY_* names they always had (an
    empty value still means the default), the TOML file and the flags."""
    from agents.models_job import DeployOptions

    defaults = DeployOptions(load_config({}, environ={}))
    assert (defaults.poll, defaults.rate_limit, defaults.quota, defaults.check_timeout) == (
        30.0,
        0,
        0,
        300.0,
    )
    assert (defaults.allow_unverified, defaults.public_key) == (False, None)

    env = {
        "EDGEFLEET_AGENT_DEPLOY_POLL": "1m",
        "EDGEFLEET_AGENT_DEPLOY_RATE_LIMIT": "1MiB",
        "EDGEFLEET_AGENT_DEPLOY_QUOTA": "",
        "EDGEFLEET_AGENT_DEPLOY_ALLOW_UNVERIFIED": "yes",
        "EDGEFLEET_AGENT_DEPLOY_PUBLIC_KEY": "a2V5",
    }
    path = write(tmp_path, 'deploy_quota = "2GB"\ndeploy_poll = "5s"\ndeploy_check_timeout = "1m"\n')
    config = load_config({"deploy_check_timeout": "90s"}, path, environ=env)
    options = DeployOptions(config)
    assert options.poll == 60.0  # env beats file
    assert options.rate_limit == 2**20
    assert options.quota == 0  # an empty env value is the default, and env beats file
    assert options.check_timeout == 90.0  # flag
    assert options.allow_unverified is True and options.public_key == "a2V5"

    # Without a config (how tests and tools build it): the environment alone, as before.
    for key in list(os.environ):
        if key.startswith("EDGEFLEET_AGENT_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bare = DeployOptions()
    assert (bare.poll, bare.rate_limit, bare.quota, bare.allow_unverified) == (60.0, 2**20, 0, True)


def test_a_bad_deployment_setting_names_its_source():
    with pytest.raises(ConfigError, match="EDGEFLEET_AGENT_DEPLOY_QUOTA"):
        load_config({}, environ={"EDGEFLEET_AGENT_DEPLOY_QUOTA": "lots"})
    with pytest.raises(ConfigError, match="deploy-poll"):
        load_config({"deploy_poll": "0s"}, environ={})
