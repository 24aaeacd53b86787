"""What /etc/meterguard/meterguard.toml may contain, as pydantic models.

Every model forbids unknown keys (a misspelt key must not be silently ignored in
a tool that guards a data cap) and is strict: TOML already has types, so
`metered = "yes"` is an error rather than a guess. New features add optional
fields, which keeps every existing file valid.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meterguard.config.errors import ConfigError, Loc, format_field
from meterguard.config.plans import AlertsConfig, PlanConfig, parse_byte_size
from meterguard.config.policy import NetworkMatch, PolicyConfig, TunnelPort

DEFAULT_CONFIG_PATH = Path("/etc/meterguard/meterguard.toml")
DEFAULT_STATE_DIR = Path("/var/lib/meterguard")

# The kernel's IFNAMSIZ is 16 bytes including the terminating NUL.
IFNAME_MAX_BYTES = 15
NAME_MAX_LENGTH = 32
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_GLOB_CHARS = frozenset("*?[")


def _check_name(value: str) -> str:
    if not value or value[0] in "_-" or not set(value) <= _NAME_CHARS:
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    if len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"{value!r} is longer than {NAME_MAX_LENGTH} characters")
    return value


def is_glob(pattern: str) -> bool:
    """True if an `interfaces` entry is a shell glob rather than a literal name."""
    return not _GLOB_CHARS.isdisjoint(pattern)


def _glob_min_bytes(pattern: str) -> int:
    """Length in bytes of the shortest name a `prefix*` glob can match."""
    return len(pattern.rstrip("*").encode())


def _check_interface(value: str) -> str:
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not an interface name")
    if any(char in "/:" or char.isspace() for char in value):
        # The kernel's dev_valid_name() refuses these.
        raise ValueError(f"{value!r}: interface names cannot contain '/', ':' or whitespace")
    if '"' in value or "\\" in value:
        raise ValueError(f"{value!r}: interface names cannot contain quotes or backslashes")
    if is_glob(value) and not (value.endswith("*") and not is_glob(value[:-1])):
        # nftables matches interface names literally or with one trailing '*' wildcard, and
        # the kernel does the matching (so it holds while the daemon is down): nothing else
        # can be expressed.
        raise ValueError(
            f"the glob {value!r} cannot be matched by nftables: use a name, or a prefix "
            "followed by one '*' (e.g. 'wwan*')"
        )
    if is_glob(value):
        shortest = _glob_min_bytes(value)
        if shortest > IFNAME_MAX_BYTES:
            raise ValueError(
                f"the glob {value!r} only matches names of {shortest} bytes or more, but "
                f"interface names are at most {IFNAME_MAX_BYTES} bytes"
            )
    elif len(value.encode()) > IFNAME_MAX_BYTES:
        raise ValueError(
            f"{value!r} is {len(value.encode())} bytes; interface names are at most "
            f"{IFNAME_MAX_BYTES} bytes (IFNAMSIZ - 1)"
        )
    return value


def _check_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as 'Asia/Hong_Kong'"
        ) from None
    return value


def _check_state_dir(value: object) -> object:
    if isinstance(value, str):
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        return Path(value)
    return value


Name = Annotated[str, AfterValidator(_check_name)]
InterfacePattern = Annotated[str, AfterValidator(_check_interface)]
ByteSize = Annotated[int, BeforeValidator(parse_byte_size), Field(gt=0)]
TimeZoneName = Annotated[str, AfterValidator(_check_time_zone)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DaemonConfig(_Section):
    """`[daemon]`: how the daemon runs."""

    # Polling faster than 0.2 s costs CPU for nothing (caps are kernel quotas, not
    # polls); slower than a minute makes alerts late.
    interval: Annotated[float, Field(ge=0.2, le=60.0)] = 1.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: Annotated[Path, BeforeValidator(_check_state_dir)] = DEFAULT_STATE_DIR


class LedgerConfig(_Section):
    """`[ledger]`: how long usage history is kept."""

    minute_retention_days: Annotated[int, Field(ge=1, le=3660)] = 35
    # 15-minute UTC buckets: every time zone's day starts on a quarter hour, so
    # reports stay exact in any zone after the minute rows are gone. 0 = forever.
    bucket_retention_days: Annotated[int, Field(ge=0)] = 0

    @field_validator("bucket_retention_days")
    @classmethod
    def _buckets_outlive_minutes(cls, keep: int, info: ValidationInfo) -> int:
        minutes = info.data.get("minute_retention_days")
        if keep and isinstance(minutes, int) and keep < minutes:
            raise ValueError(
                f"must be 0 (forever) or at least minute_retention_days ({minutes}), got {keep}"
            )
        return keep


class NetworkConfig(_Section):
    """`[[network]]`: a set of interfaces that count as one network."""

    name: Name
    interfaces: Annotated[list[InterfacePattern], Field(min_length=1)]
    metered: bool = True
    plan: Name | None = None
    time_zone: TimeZoneName | None = None
    # Identities (SSID, SIM...) that claim an active connection's interfaces for this network.
    match: NetworkMatch | None = None
    # Tunnels (VPNs) that ride on this network's links: metered too, counted per app, and
    # their encapsulation shown as its own bucket. `tunnel_ports` names their underlay.
    tunnels: list[InterfacePattern] = Field(default_factory=list)
    tunnel_ports: list[TunnelPort] = Field(default_factory=list, validate_default=True)
    # What to block when the modem reports roaming on this network's SIM.
    roaming_guard: Literal["off", "block-all", "allow-list"] = "off"

    @field_validator("tunnel_ports")
    @classmethod
    def _tunnels_need_ports(cls, ports: list[str], info: ValidationInfo) -> list[str]:
        # Without the underlay's port the encapsulated bytes would be counted again on the
        # link (as the VPN daemon's or unattributed), on top of the tunnel's own.
        if info.data.get("tunnels") and not ports:
            raise ValueError("tunnels need their underlay, e.g. tunnel_ports = [\"udp:1194\"]")
        return ports

    def literal_interfaces(self) -> list[str]:
        return [pattern for pattern in self.interfaces if not is_glob(pattern)]

    def interface_globs(self) -> list[str]:
        return [pattern for pattern in self.interfaces if is_glob(pattern)]

    def matches(self, ifname: str) -> bool:
        return any(fnmatchcase(ifname, pattern) for pattern in self.interfaces)

    def zone(self) -> ZoneInfo | None:
        return None if self.time_zone is None else ZoneInfo(self.time_zone)


class Config(_Section):
    """The whole file. Every section is optional; an empty file is a valid config.

    Problems that span fields (a duplicate name, an interface claimed twice, a plan
    that does not exist) raise ConfigError, naming the field, rather than pydantic's
    ValidationError, which could only blame the file as a whole; load_config and
    parse_config add the file and line.
    """

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    network: list[NetworkConfig] = Field(default_factory=list)
    plans: dict[Name, PlanConfig] = Field(default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        problems = _cross_field_problems(self)
        if problems:
            errors = [
                ConfigError(None, None, format_field(loc), message, loc=loc)
                for loc, message in problems
            ]
            first = errors[0]
            raise ConfigError(
                None, None, first.field, first.message, loc=first.loc, also=errors[1:]
            )
        return self

    def metered_networks(self) -> list[NetworkConfig]:
        return [network for network in self.network if network.metered]

    def network_for_interface(self, ifname: str) -> NetworkConfig | None:
        """The network that claims `ifname`: a literal name wins over any glob, then
        the first network (in file order) with a matching glob."""
        for network in self.network:
            if ifname in network.literal_interfaces():
                return network
        for network in self.network:
            if any(fnmatchcase(ifname, glob) for glob in network.interface_globs()):
                return network
        return None

    def plan_for(self, network: NetworkConfig) -> PlanConfig | None:
        return None if network.plan is None else self.plans[network.plan]

    def plan_networks(self, plan: str) -> list[NetworkConfig]:
        """The metered networks that draw on `plan` (more than one may share it)."""
        return [n for n in self.network if n.plan == plan and n.metered]


def _cross_field_problems(config: Config) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    claimed: dict[str, tuple[int, str]] = {}
    for i, network in enumerate(config.network):
        if network.name in names:
            problems.append(
                (
                    ("network", i, "name"),
                    f"network name {network.name!r} is already used by "
                    f"network[{names[network.name]}]",
                )
            )
        names.setdefault(network.name, i)
        for k, ifname in enumerate(network.interfaces):
            if is_glob(ifname):
                continue  # globs may overlap: the first network in file order wins
            if ifname in claimed:
                owner, owner_name = claimed[ifname]
                where = (
                    "earlier in this list"
                    if owner == i
                    else f"by network[{owner}] ({owner_name!r})"
                )
                problems.append(
                    (
                        ("network", i, "interfaces", k),
                        f"interface {ifname!r} is already claimed {where}",
                    )
                )
            else:
                claimed[ifname] = (i, network.name)
        if network.plan is not None and network.plan not in config.plans:
            known = ", ".join(sorted(config.plans)) or "none are defined"
            problems.append(
                (
                    ("network", i, "plan"),
                    f"no plan named {network.plan!r}: add a [plans.{network.plan}] table "
                    f"(known plans: {known})",
                )
            )
    return problems
