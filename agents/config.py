"""Agent settings: defaults < TOML config file < ``EDGEFLEET_AGENT_*`` environment < CLI flags.

Every setting has one name used everywhere: ``interval`` in the TOML file, ``EDGEFLEET_AGENT_INTERVAL``
in the environment, ``--interval`` on the command line. Durations take seconds or a unit
(``500ms``, ``10s``, ``5m``, ``24h``, ``7d``); sizes take bytes or a unit (``512KiB``, ``32MiB``,
``1GB``). A value that does not parse stops the agent with a message naming where it came from,
rather than running with a setting nobody asked for.

Two settings can also come from the server (``config`` in the enrollment answer):
``telemetry_interval_s`` and ``batch_size``. The server's value wins over the built-in default;
a value set locally (file, environment or flag) wins over the server's, for debugging one device.
"""

from __future__ import annotations

import math
import os

ENV_PREFIX = "EDGEFLEET_AGENT_"
DEFAULT_STATE_DIR = "/var/lib/edgefleet-agent"
DEFAULT_CONFIG_FILE = "/etc/edgefleet-agent/agent.toml"
DEFAULT_INTERVAL_S = 10.0
DEFAULT_BATCH_SIZE = 3


class ConfigError(ValueError):
    """A setting is missing or does not parse; the message says which and where from."""


# --- value parsers ------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _split_unit(text: str) -> tuple[float, str]:
    text = text.strip().lower().replace(" ", "").replace("_", "")
    i = len(text)
    while i > 0 and text[i - 1].isalpha():
        i -= 1
    number, unit = text[:i], text[i:]
    return float(number), unit


def parse_duration(value: object) -> float:
    """Seconds as a float from ``10``, ``2.5``, ``"500ms"``, ``"5m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        number, unit = _split_unit(str(value))
        if unit not in ("", *_DURATION_UNITS):
            raise ValueError(f"unknown duration unit {unit!r} (use ms, s, m, h or d)")
        seconds = number * _DURATION_UNITS.get(unit, 1.0)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds >= 0")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"512KiB"``, ``"32MiB"``, ``"1GB"`` (K/M/G alone are binary)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int | float):
        size = float(value)
    else:
        number, unit = _split_unit(str(value))
        if unit not in ("", *_SIZE_UNITS):
            raise ValueError(f"unknown size unit {unit!r} (use B, KiB, MiB, GiB, KB, MB or GB)")
        size = number * _SIZE_UNITS.get(unit, 1)
    if not math.isfinite(size) or size < 0:
        raise ValueError("a size must be a finite number of bytes >= 0")
    return int(size)


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    number = int(value) if isinstance(value, int) else int(str(value).strip())
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a number > 0")
    return number


def _fraction(value: object) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError("must be between 0 and 1 (exclusive)")
    return number


def _choice(*choices: str):
    def parse(value: object) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _optional_path(value: object) -> str | None:
    text = str(value).strip()
    return os.path.expanduser(text) if text else None


def _optional_str(value: object) -> str | None:
    text = str(value).strip()
    return text or None


def _min_duration(minimum: float):
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g} s")
        return seconds

    return parse


def _blank_is(default, parse):
    """``parse``, except that an empty value means ``default`` (``EDGEFLEET_AGENT_DEPLOY_QUOTA=``
    has always meant "not set" for the deployment settings)."""

    def parse_or_default(value: object):
        if isinstance(value, str) and not value.strip():
            return default
        return parse(value)

    return parse_or_default


# --- the settings -------------------------------------------------------------------------------
# A plain table rather than a dataclass: ``dataclasses`` pulls in ``inspect`` and costs the daemon
# more than a megabyte of RSS, a twentieth of its budget.


class Setting:
    __slots__ = ("name", "parse", "default", "help", "metavar")

    def __init__(self, name, parse, default, help, metavar="VALUE"):
        self.name, self.parse, self.default, self.help, self.metavar = (
            name,
            parse,
            default,
            help,
            metavar,
        )


SETTINGS = [
    Setting(
        "state_dir",
        _optional_path,
        DEFAULT_STATE_DIR,
        "directory for credentials, the sample buffer and the status file",
        "DIR",
    ),
    Setting(
        "server", _optional_str, None, "server URL; overrides the one stored at enrollment", "URL"
    ),
    Setting(
        "ca_file",
        _optional_path,
        None,
        "PEM bundle of CAs to trust for HTTPS (default: the system's)",
        "FILE",
    ),
    Setting(
        "interval",
        _min_duration(0.05),
        None,
        "sampling interval (default: the server's, else 10s)",
        "DURATION",
    ),
    Setting(
        "jitter",
        _fraction,
        0.1,
        "random spread of each interval, as a fraction (0.1 = plus or minus 10 percent)",
        "FRACTION",
    ),
    Setting(
        "batch_size", _positive_int, None, "samples per report (default: the server's, else 3)", "N"
    ),
    Setting(
        "drain_batch_size", _positive_int, 100, "samples per report while sending a backlog", "N"
    ),
    Setting(
        "drain_rate",
        _positive_float,
        0.5,
        "at most this many reports per second while sending a backlog",
        "PER_S",
    ),
    Setting(
        "buffer_max_bytes",
        parse_size,
        32 * 1024**2,
        "size limit of buffered samples (default 32MiB); the oldest are dropped beyond it",
        "SIZE",
    ),
    Setting(
        "buffer_max_age",
        parse_duration,
        86400.0,
        "age limit of buffered samples (default 24h); older ones are dropped",
        "DURATION",
    ),
    Setting(
        "sync",
        _choice("normal", "full"),
        "normal",
        "buffer durability: normal (survives a crash; a power cut may lose the last "
        "seconds) or full (fsync every sample)",
        "MODE",
    ),
    Setting(
        "backoff_initial",
        _min_duration(0.01),
        1.0,
        "first retry delay after a failed report (default 1s)",
        "DURATION",
    ),
    Setting(
        "backoff_max",
        _min_duration(0.01),
        300.0,
        "longest retry delay (default 5m); delays double up to it, with full jitter",
        "DURATION",
    ),
    Setting(
        "timeout",
        _min_duration(0.1),
        10.0,
        "connect and read timeout of each HTTP request (default 10s)",
        "DURATION",
    ),
    Setting(
        "gzip",
        parse_bool,
        False,
        "gzip request bodies larger than 1 KiB (the server must accept it)",
        "BOOL",
    ),
    Setting(
        "models_dir",
        _optional_path,
        None,
        "where models live; its filesystem is reported as disk usage (default: STATE_DIR/models)",
        "DIR",
    ),
    Setting(
        "inventory_interval",
        _min_duration(1),
        3600.0,
        "how often to look for inventory changes (default 1h)",
        "DURATION",
    ),
    Setting(
        "pending_poll",
        _min_duration(0.05),
        60.0,
        "how often to ask again while the device awaits approval (default 1m)",
        "DURATION",
    ),
    Setting(
        "log_level", _choice("debug", "info", "warning", "error"), "info", "log verbosity", "LEVEL"
    ),
    # Deployments (agents.models_job). Their environment names, EDGEFLEET_AGENT_DEPLOY_*, predate
    # these settings and keep working; an empty value there still means the default.
    Setting(
        "deploy_poll",
        _blank_is(30.0, _min_duration(0.05)),
        30.0,
        "how often to ask the server which models this device should run (default 30s)",
        "DURATION",
    ),
    Setting(
        "deploy_rate_limit",
        _blank_is(0, parse_size),
        0,
        "bandwidth limit of model downloads, in bytes per second (default 0: none)",
        "SIZE",
    ),
    Setting(
        "deploy_quota",
        _blank_is(0, parse_size),
        0,
        "disk space all models may use together; a model beyond it is refused (default 0: none)",
        "SIZE",
    ),
    Setting(
        "deploy_check_timeout",
        _blank_is(300.0, parse_duration),
        300.0,
        "time limit of a model's load, health check and benchmark in the child process "
        "(default 5m)",
        "DURATION",
    ),
    Setting(
        "deploy_allow_unverified",
        _blank_is(False, parse_bool),
        False,
        "install models whose Ed25519 signature cannot be checked (no `cryptography` package "
        "or no server key), on the sha256 alone (default false)",
        "BOOL",
    ),
    Setting(
        "deploy_public_key",
        _optional_str,
        None,
        "the server's Ed25519 public key (raw, base64) to verify models with, instead of the "
        "one fetched and pinned at the first deployment",
        "BASE64",
    ),
]
SETTING_NAMES = {s.name for s in SETTINGS}
_BY_NAME = {s.name: s for s in SETTINGS}


class AgentConfig:
    """The agent's effective settings (attributes named as in :data:`SETTINGS`).

    Build it with :func:`load_config`. ``sources`` says where each explicitly set value came from
    ("file", "env" or "flag").
    """

    def __init__(self, values=None, sources=None, config_file=None):
        values = values or {}
        for setting in SETTINGS:
            setattr(self, setting.name, values.get(setting.name, setting.default))
        self.sources = dict(sources or {})
        self.config_file = config_file

    def as_dict(self) -> dict:
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def __eq__(self, other) -> bool:
        return isinstance(other, AgentConfig) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"AgentConfig({self.as_dict()!r})"

    @property
    def effective_models_dir(self) -> str:
        return self.models_dir or os.path.join(self.state_dir, "models")

    def effective_interval(self, server_config: dict | None = None) -> float:
        """Local setting > server's ``telemetry_interval_s`` > 10 s."""
        return float(
            _local_or_server(
                self.interval, server_config, "telemetry_interval_s", DEFAULT_INTERVAL_S, 0.05
            )
        )

    def effective_batch_size(self, server_config: dict | None = None) -> int:
        """Local setting > server's ``batch_size`` > 3."""
        return int(
            _local_or_server(self.batch_size, server_config, "batch_size", DEFAULT_BATCH_SIZE, 1)
        )


def _local_or_server(local, server_config, key, default, minimum):
    if local is not None:
        return local
    value = (server_config or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(minimum, value)
    return default


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(name: str, value: object, origin: str) -> object:
    try:
        return _BY_NAME[name].parse(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {name} = {value!r}: {exc}") from None


def read_config_file(path: str) -> dict[str, object]:
    """The settings of a TOML file (top-level keys, or an ``[agent]`` table). Unknown keys are an
    error, so a typo does not silently leave a default in place."""
    import tomllib  # only when there is a file: it costs memory we do not otherwise need

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("agent"), dict):
        data = {**{k: v for k, v in data.items() if k != "agent"}, **data["agent"]}
    unknown = sorted(set(data) - SETTING_NAMES)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(SETTING_NAMES))}"
        )
    return {name: _parse(name, value, f"config file {path}") for name, value in data.items()}


def read_env(environ: dict[str, str] | None = None, names=None) -> dict[str, object]:
    """The settings set in the environment (only ``names``, if given)."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in SETTING_NAMES if names is None else names:
        key = env_name(name)
        if key in environ:
            values[name] = _parse(name, environ[key], f"environment {key}")
    return values


def load_config(
    flags: dict[str, object] | None = None,
    config_file: str | None = None,
    environ: dict[str, str] | None = None,
) -> AgentConfig:
    """The effective settings: defaults < config file < environment < flags.

    ``flags`` holds raw values given on the command line (``None`` = not given). The config file
    is ``config_file``, else ``$EDGEFLEET_AGENT_CONFIG``, else ``/etc/edgefleet-agent/agent.toml``
    if it exists; an explicitly named file must exist.
    """
    environ = os.environ if environ is None else environ
    explicit = config_file or environ.get(ENV_PREFIX + "CONFIG")
    path = os.path.expanduser(explicit) if explicit else DEFAULT_CONFIG_FILE
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    used_file = None
    if explicit or os.path.isfile(path):
        values.update(read_config_file(path))
        sources.update(dict.fromkeys(values, "file"))
        used_file = path
    env_values = read_env(environ)
    values.update(env_values)
    sources.update(dict.fromkeys(env_values, "env"))
    for name, value in (flags or {}).items():
        if value is None or name not in SETTING_NAMES:
            continue
        values[name] = _parse(name, value, f"option {flag_name(name)}")
        sources[name] = "flag"
    config = AgentConfig(values, sources, used_file)
    if config.state_dir is None:
        raise ConfigError("state_dir must not be empty")
    if config.backoff_max < config.backoff_initial:
        raise ConfigError("backoff_max must be >= backoff_initial")
    return config
