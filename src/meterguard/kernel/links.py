"""Network interfaces: which exist, their byte counters, and the settings that make counting exact.

Exact counting of what a carrier bills needs two interface settings on a metered link:

* `gso_max_segs 1`: since Linux 4.20 TCP always builds GSO super-packets and every netfilter
  hook sees one header per super-packet, so upload counted in the output hook was 3.3% short.
  With one segment per skb the hook matched the carrier to the byte. It applies to sockets
  opened after the change, so it is set as soon as a metered link appears.
* GRO off: with GRO the input hook sees merged packets with one set of headers.

Both are recorded before they are changed and put back on stop and by `meterguard uninstall`.
Everything here acts in the caller's network namespace: /proc/net follows the thread's
namespace and so do `ip`, `ethtool` and if_nameindex, while /sys/class/net does not.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# ARPHRD types whose frames carry a 14-byte Ethernet header that the byte counters include.
_ETHER_LINK_TYPES = {"ether", "loopback"}


@dataclass(frozen=True, slots=True)
class LinkStats:
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class LinkSettings:
    gso_max_segs: int | None
    gro: bool | None


def read_proc_net_dev(text: str | None = None) -> dict[str, LinkStats]:
    """Byte and packet counters of every interface in this namespace."""
    if text is None:
        text = Path("/proc/net/dev").read_text()
    stats: dict[str, LinkStats] = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 10:
            continue
        stats[name.strip()] = LinkStats(
            rx_bytes=int(fields[0]),
            rx_packets=int(fields[1]),
            tx_bytes=int(fields[8]),
            tx_packets=int(fields[9]),
        )
    return stats


def link_header_bytes(link_type: str) -> int:
    """Bytes of link-layer header counted per packet, to get back to IP bytes."""
    return 14 if link_type in _ETHER_LINK_TYPES else 0


class LinkControl(Protocol):
    """Reading and changing interface settings; a fake is below."""

    def names(self) -> list[str]: ...

    def index(self) -> dict[str, int]: ...

    def stats(self) -> dict[str, LinkStats]: ...

    def link_type(self, ifname: str) -> str: ...

    def settings(self, ifname: str) -> LinkSettings: ...

    def apply(self, ifname: str, settings: LinkSettings) -> None: ...


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class SystemLinks:
    """The real interfaces of the current network namespace."""

    def __init__(self) -> None:
        self._ip = shutil.which("ip") or "/usr/sbin/ip"
        self._ethtool = shutil.which("ethtool") or "/usr/sbin/ethtool"

    def names(self) -> list[str]:
        return list(self.index())

    def index(self) -> dict[str, int]:
        """Name -> ifindex; a recreated interface gets a new index, which marks a reset."""
        return {name: idx for idx, name in socket.if_nameindex()}

    def stats(self) -> dict[str, LinkStats]:
        return read_proc_net_dev()

    def _details(self, ifname: str) -> dict[str, object]:
        doc = json.loads(_run([self._ip, "-d", "-j", "link", "show", "dev", ifname]))
        return dict(doc[0]) if doc else {}

    def link_type(self, ifname: str) -> str:
        return str(self._details(ifname).get("link_type", "ether"))

    def settings(self, ifname: str) -> LinkSettings:
        segs = self._details(ifname).get("gso_max_segs")
        gro: bool | None = None
        try:
            for line in _run([self._ethtool, "-k", ifname]).splitlines():
                if line.startswith("generic-receive-offload:"):
                    gro = line.split(":", 1)[1].split()[0] == "on"
        except OSError as exc:
            log.warning("cannot read offloads of %s: %s", ifname, exc)
        return LinkSettings(int(segs) if isinstance(segs, int) else None, gro)

    def apply(self, ifname: str, settings: LinkSettings) -> None:
        if settings.gso_max_segs is not None:
            _run([self._ip, "link", "set", "dev", ifname, "gso_max_segs",
                  str(settings.gso_max_segs)])
        if settings.gro is not None:
            try:
                _run([self._ethtool, "-K", ifname, "gro", "on" if settings.gro else "off"])
            except OSError as exc:
                # Some drivers fix GRO; counting then follows the driver, which we report.
                log.warning("cannot change GRO on %s: %s", ifname, exc)


class FakeLinks:
    """Interfaces held in memory, for tests above the kernel."""

    def __init__(self) -> None:
        self.counters: dict[str, LinkStats] = {}
        self.types: dict[str, str] = {}
        self.current: dict[str, LinkSettings] = {}

    def add(self, ifname: str, link_type: str = "ether") -> None:
        self.counters[ifname] = LinkStats(0, 0, 0, 0)
        self.types[ifname] = link_type
        self.current[ifname] = LinkSettings(gso_max_segs=65535, gro=True)

    def names(self) -> list[str]:
        return list(self.counters)

    def index(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.counters)}

    def stats(self) -> dict[str, LinkStats]:
        return dict(self.counters)

    def link_type(self, ifname: str) -> str:
        return self.types[ifname]

    def settings(self, ifname: str) -> LinkSettings:
        return self.current[ifname]

    def apply(self, ifname: str, settings: LinkSettings) -> None:
        old = self.current[ifname]
        self.current[ifname] = LinkSettings(
            settings.gso_max_segs if settings.gso_max_segs is not None else old.gso_max_segs,
            settings.gro if settings.gro is not None else old.gro,
        )


EXACT_COUNTING = LinkSettings(gso_max_segs=1, gro=False)


class LinkTuner:
    """Sets exact-counting settings on metered links and remembers what to put back.

    The originals are kept in a JSON file in the state directory, written before anything is
    changed, so that `meterguard uninstall` can restore them even after a crash.
    """

    def __init__(self, links: LinkControl, saved_path: Path) -> None:
        self._links = links
        self._path = saved_path
        self._saved: dict[str, dict[str, int | bool | None]] = self._load()

    def _load(self) -> dict[str, dict[str, int | bool | None]]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _store(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._saved, indent=1, sort_keys=True))
        tmp.replace(self._path)

    def tune(self, ifname: str) -> None:
        if ifname not in self._saved:
            old = self._links.settings(ifname)
            self._saved[ifname] = {"gso_max_segs": old.gso_max_segs, "gro": old.gro}
            self._store()
        self._links.apply(ifname, EXACT_COUNTING)

    def restore_all(self) -> list[str]:
        """Put back every saved setting whose interface still exists; return their names."""
        present = set(self._links.names())
        restored: list[str] = []
        for ifname, old in sorted(self._saved.items()):
            if ifname in present:
                segs, gro = old.get("gso_max_segs"), old.get("gro")
                try:
                    self._links.apply(ifname, LinkSettings(
                        segs if isinstance(segs, int) and not isinstance(segs, bool) else None,
                        gro if isinstance(gro, bool) else None,
                    ))
                    restored.append(ifname)
                except OSError as exc:
                    log.warning("cannot restore %s: %s", ifname, exc)
                    continue
        self._saved = {}
        self._store()
        return restored

    @property
    def tuned(self) -> list[str]:
        return sorted(self._saved)
