"""Turning a cgroup v2 path into the app that reports name.

Pure: no I/O. The meter walks cgroupfs itself and hands us paths relative to the
cgroup v2 root. We never assume a depth: on a hybrid layout the tree sits under
`unified/`, and the lab builds a whole simulated desktop under a prefix of its own
(`mglab-1234/user.slice/...`). So a path is read from its deepest component upwards
and the first component that names an app wins.

Naming follows systemd's desktop-environment integration conventions:
`app[-<launcher>]-<ApplicationID>[@<RANDOM>].service` and
`app[-<launcher>]-<ApplicationID>-<RANDOM>.scope`, where dashes inside the
ApplicationID are escaped as `\\x2d` so that literal dashes separate the fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

AppKind = Literal[
    "app", "flatpak", "snap", "service", "user-service", "exec", "session", "executable"
]


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """What a cgroup is reported as.

    `name` is what reports show ("firefox", "org.gnome.Terminal", "packagekit");
    `unit` is the cgroup path component that produced it, kept so that two scopes
    of the same app can still be told apart when that matters.
    """

    name: str
    kind: AppKind
    unit: str


# Launchers that desktops and tools put between "app-" and the ApplicationID.
# "meterguard" is what `meterguard exec --app NAME` creates, for desktops (Xfce,
# i3, a TTY) that leave everything in one session scope.
_LAUNCHER_KINDS: Final[dict[str, AppKind]] = {
    "gnome": "app",
    "kde": "app",
    "xfce": "app",
    "flatpak": "flatpak",
    "snap": "snap",
    "meterguard": "exec",
}

# systemd writes its random suffixes as lower-case hex (sd_id128) and GNOME Shell
# uses the PID. Accepting any alphanumeric word would eat the last field of an
# unescaped id such as "org.gnome.Software", so only digits and a-f qualify.
_RANDOM: Final = re.compile(r"[0-9a-f]+")
_ESCAPE: Final = re.compile(r"\\x([0-9a-fA-F]{2})")
# An unknown launcher is stripped only if it looks like a launcher: one word, no
# dots (a dotted first field is a reverse-DNS id, not a launcher). Compositors may
# capitalise theirs (uwsm writes the desktop's name, e.g. "Hyprland").
_LAUNCHER_WORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Desktop file ids are mostly ASCII, but an unescaped UTF-8 name is still a name.
_PLAUSIBLE_ID: Final = re.compile(r"\w[\w.+~:@-]*")
# logind session ids are decimal for seats and "c<N>" for greeter sessions.
_SESSION: Final = re.compile(r"session-[A-Za-z0-9]+\.scope")
_USER_MANAGER: Final = re.compile(r"user@[0-9]+\.service")
_SNAP: Final = re.compile(r"snap\.([a-z0-9][a-z0-9-]*)\..+\.(?:scope|service)")
# `systemd-run` without --unit names its transient units run-u123 / run-r<hex> /
# run-p<pid>-i<n>; those names say nothing, so the executable is the better name.
_TRANSIENT: Final = re.compile(r"run-[a-z0-9-]+\.(?:scope|service)")
# dbus-broker starts activatable services as dbus-:1.2-<bus name>@0.service; the bus
# name is what identifies them (e.g. org.gnome.OnlineAccounts).
_DBUS_ACTIVATED: Final = re.compile(r"dbus-:[0-9.]+-([^@]+)(?:@[^@]*)?\.service")


def is_session_scope(component: str) -> bool:
    """True for a logind session scope such as `session-3.scope`.

    Xfce, i3, a TTY and anything launched from a terminal share one such scope, so
    it identifies nobody: callers fall back to the executable (kind "session").
    """
    return _SESSION.fullmatch(component) is not None


def identify_cgroup(path: str) -> AppIdentity | None:
    """Return the app that the cgroup at `path` (relative to the v2 root) belongs to.

    Components are read from the deepest upwards; the first that names an app wins,
    so a process in a sub-cgroup of a service is still that service. A session scope
    stops the walk with None, as does reaching the root without finding an app:
    the caller then names the cgroup after its executable.
    """
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts) - 1, -1, -1):
        component = parts[depth]
        if is_session_scope(component):
            return None
        under_user_manager = any(_USER_MANAGER.fullmatch(p) for p in parts[:depth])
        identity = _identify_unit(component, under_user_manager)
        if identity is not None:
            return identity
    return None


def identify_executable(exe_path: str, unit: str) -> AppIdentity:
    """Name a cgroup after the executable of a process in it (the fallback)."""
    # readlink(/proc/PID/exe) appends " (deleted)" once a package upgrade replaced
    # the binary; the process is still the same program.
    cleaned = exe_path.removesuffix(" (deleted)").rstrip("/")
    name = cleaned.rsplit("/", 1)[-1]
    # Kernel threads and zombies have no executable at all.
    return AppIdentity(name=name or "unknown", kind="executable", unit=unit)


def _identify_unit(component: str, under_user_manager: bool) -> AppIdentity | None:
    service_kind: AppKind = "user-service" if under_user_manager else "service"
    if component.endswith(".slice"):
        return None  # slices group units; they are never an app themselves
    if component == "init.scope":
        # PID 1 (or the user's own systemd instance under user@UID.service).
        return AppIdentity(name="systemd", kind=service_kind, unit=component)
    if component.startswith("app-") and component.endswith((".scope", ".service")):
        return _identify_app(component)
    snap = _SNAP.fullmatch(component)
    if snap is not None:
        return AppIdentity(name=snap.group(1), kind="snap", unit=component)
    if not component.endswith(".service"):
        return None
    if _USER_MANAGER.fullmatch(component) or _TRANSIENT.fullmatch(component):
        return None  # user@UID.service contains apps rather than being one
    dbus = _DBUS_ACTIVATED.fullmatch(component)
    if dbus is not None:
        name = _unescape(dbus.group(1))
    else:
        # Template instances (getty@tty1) are one program with many arguments.
        name = _unescape(component.removesuffix(".service").split("@", 1)[0])
    if not name:
        return None
    return AppIdentity(name=name, kind=service_kind, unit=component)


def _identify_app(component: str) -> AppIdentity | None:
    if component.endswith(".scope"):
        fields = component[len("app-") : -len(".scope")].split("-")
        if len(fields) >= 2 and _RANDOM.fullmatch(fields[-1]):
            fields = fields[:-1]
    else:
        stem = component[len("app-") : -len(".service")]
        fields = stem.split("@", 1)[0].split("-")
    kind: AppKind = "app"
    if len(fields) >= 2 and fields[0] in _LAUNCHER_KINDS:
        kind = _LAUNCHER_KINDS[fields[0]]
        fields = fields[1:]
    elif (
        len(fields) == 2
        and _LAUNCHER_WORD.fullmatch(fields[0])
        and _plausible_id(_unescape(fields[1]))
    ):
        # An unknown launcher word. With three or more fields the id itself was
        # probably written unescaped ("google-chrome"), so nothing is stripped.
        fields = fields[1:]
    # Launchers that forget to escape dashes leave several fields: join them back.
    name = _unescape("-".join(fields))
    if not _plausible_id(name):
        return None
    return AppIdentity(name=name, kind=kind, unit=component)


def _plausible_id(name: str) -> bool:
    # A bare number is a PID or a random suffix, never an application id.
    return _PLAUSIBLE_ID.fullmatch(name) is not None and not name.isdigit()


def _unescape(text: str) -> str:
    """Undo systemd's `\\xNN` unit-name escaping (bytes, so UTF-8 names survive)."""
    if "\\x" not in text:
        return text
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode()
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += text[pos:].encode()
    return out.decode("utf-8", errors="replace")
