"""Low-level helpers of the lab: running commands, network namespaces, sysctls, offloads.

Everything here shells out to the standard tools (ip, nsenter, sysctl, ethtool),
because the lab only builds test fixtures and must stay readable next to the
experiments in the design notes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")

# The prefix becomes part of namespace names, a cgroup directory name and a
# state directory.  Keeping it to lowercase letters, digits and dashes (no
# dots, no slashes) means cleanup_stale(prefix) can never be pointed at a
# systemd slice such as "user.slice" or at a path outside the lab.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")


class LabError(RuntimeError):
    """A lab step failed; the message carries the command and its stderr."""


def check_prefix(prefix: str) -> str:
    """Return the prefix if it is safe to use for names and paths, else raise LabError."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise LabError(
            f"bad lab prefix {prefix!r}: use 3-32 chars of [a-z0-9-], starting with a letter"
        )
    return prefix


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; raise LabError with its stderr when check and it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed (rc={proc.returncode}): {' '.join(argv)}\n{proc.stderr.strip()}"
        )
    return proc


def ns_file(name: str) -> Path:
    """The bind-mounted namespace file that `ip netns add` creates."""
    return NETNS_DIR / name


def ns_argv(name: str, argv: Sequence[str]) -> list[str]:
    """Argv that runs `argv` inside namespace `name`.

    nsenter --net only switches the network namespace.  `ip netns exec` would
    also remount /sys for the netns, which hides cgroupfs from the process (and
    from nft, which then prints cgroup ids instead of paths).
    """
    return ["nsenter", f"--net={ns_file(name)}", "--", *argv]


def ns_exists(name: str) -> bool:
    return ns_file(name).exists()


def ns_add(name: str) -> None:
    run(["ip", "netns", "add", name])


def ns_delete(name: str) -> None:
    """Delete a namespace if it exists (idempotent)."""
    if ns_exists(name):
        run(["ip", "netns", "delete", name], check=False)


def ns_pids(name: str) -> list[int]:
    """PIDs whose network namespace is `name` (empty when the namespace is gone)."""
    if not ns_exists(name):
        return []
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def ip(name: str, *args: str) -> None:
    """`ip -n NAME ARGS...`: ip switches namespace itself; no cgroupfs needed here."""
    run(["ip", "-n", name, *args])


def sysctl(name: str, settings: Mapping[str, str | int]) -> None:
    """Set sysctls inside a namespace; /proc/sys/net is per network namespace."""
    pairs = [f"{key}={value}" for key, value in settings.items()]
    run(ns_argv(name, ["sysctl", "-q", "-w", *pairs]))


# Features that make a veth pass GSO/GRO super-packets (up to 64 KB) between
# namespaces.  A real carrier bills segmented, wire-sized packets, so every lab
# interface must segment in software before the veth.
_OFFLOADS_OFF = ("tso", "gso", "gro", "tx-udp-segmentation", "lro")
# What must read "off" afterwards (`ethtool -k` long names).  LRO is fixed off
# on veth; it is set anyway in case a kernel ever offers it.
_MUST_BE_OFF = (
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-udp-segmentation",
    "large-receive-offload",
)


def disable_offloads(name: str, ifname: str) -> None:
    """Turn segmentation/receive offloads off on one interface and verify they are off."""
    args: list[str] = []
    for feature in _OFFLOADS_OFF:
        args += [feature, "off"]
    run(ns_argv(name, ["ethtool", "-K", ifname, *args]))
    state = offload_state(name, ifname)
    still_on = [feat for feat in _MUST_BE_OFF if state.get(feat, "off") != "off"]
    if still_on:
        raise LabError(f"{name}/{ifname}: offloads still on: {still_on}")


def offload_state(name: str, ifname: str) -> dict[str, str]:
    """`ethtool -k` as {feature: "on"|"off"} (the "[fixed]" suffix dropped)."""
    out = run(ns_argv(name, ["ethtool", "-k", ifname])).stdout
    state: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and value.strip():
            state[key] = value.split()[0]
    return state
