"""`[policy]`: per-app rules on metered networks; and a network's identities and tunnels.

Rule names, modes and roaming guards are the pure core's own (`meterguard.core.policy`), so
the config accepts exactly what the daemon enforces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from meterguard.config.plans import parse_byte_size
from meterguard.core.policy import Policy

RuleName = Literal["allow", "block", "background"]
_PORT = re.compile(r"^(udp|tcp):(\d{1,5})$")


def _tunnel_port(value: str) -> str:
    match = _PORT.match(value)
    if not match or not 0 < int(match[2]) < 65536:
        raise ValueError(f"{value!r}: write a tunnel's underlay as 'udp:PORT' or 'tcp:PORT'")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PolicyConfig(_Section):
    """`[policy]`: which apps may use metered data."""

    mode: Literal["default", "allow-list"] = "default"
    default: RuleName = "allow"
    allow: list[str] = Field(default_factory=list)
    apps: dict[str, RuleName] = Field(default_factory=dict)
    categories: dict[str, RuleName] = Field(default_factory=dict)
    # The leak detector's limit on an app's background bytes in one hour (optional).
    background_limit_per_hour: Annotated[int, BeforeValidator(parse_byte_size)] | None = None
    # Extra catalogue files (TOML) merged over the shipped catalogue.
    catalogue_dir: str = "/etc/meterguard/catalogue.d"
    # The catalogue's default profile (updates and sync only on Wi-Fi, ...). False leaves
    # every category to `default` unless `categories` names it.
    default_profile: bool = True

    def to_policy(self, categories: Iterable[str] = ()) -> Policy:
        rules = dict(self.categories)
        if not self.default_profile:
            for category in categories:
                rules.setdefault(category, self.default)
        return Policy(
            mode=self.mode, default=self.default, apps=dict(self.apps),
            categories=rules, allow_list=frozenset(self.allow),
        )


class NetworkMatch(_Section):
    """`match = {...}` on a network: identities NetworkManager and ModemManager report.

    A network whose `match` fits an active connection claims that connection's interfaces,
    so a profile (plan, roaming guard) follows the SIM or the Wi-Fi network wherever it
    appears, e.g. a phone's hotspot joined on wlan0.
    """

    ssid: str | None = None
    bssid: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    operator: str | None = None


TunnelPort = Annotated[str, AfterValidator(_tunnel_port)]
