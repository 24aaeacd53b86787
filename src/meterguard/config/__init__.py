"""meterguard's configuration: a TOML file validated by pydantic.

A bad file is refused with its file, line and field (`ConfigError`), so the daemon
can keep the last good ruleset in force. The reference is docs/configuration.md.
"""

from meterguard.config.errors import ConfigError
from meterguard.config.loader import load_config, parse_config
from meterguard.config.plans import AlertsConfig, PlanConfig
from meterguard.config.schema import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    IFNAME_MAX_BYTES,
    Config,
    DaemonConfig,
    LedgerConfig,
    NetworkConfig,
    is_glob,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "IFNAME_MAX_BYTES",
    "AlertsConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "LedgerConfig",
    "NetworkConfig",
    "PlanConfig",
    "is_glob",
    "load_config",
    "parse_config",
]
