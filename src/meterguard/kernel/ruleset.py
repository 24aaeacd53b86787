"""The text of meterguard's one nftables table, `inet meterguard`.

Design, with the kernel facts behind it (docs/how-it-works.md has the long form):

* Python never touches a packet. The kernel counts into dynamic sets with counters: per
  interface (`link_*`), per app by conntrack mark (`app_*`), forwarded traffic (`fwd_*`), and
  per cgroup level for flows that carry no mark yet (`socket_*_lN`).
* Attribution survives the socket: the first packet of a flow copies the app's mark from
  `cgroup_marks` (cgroup id -> mark, filled by the daemon) into the conntrack entry, so bytes
  that arrive after the app closed its socket (an aborted download) still count for it.
  `socket cgroupv2 level N` matches the ancestor at depth N only, hence one rule per level,
  deepest first, each guarded by `ct mark 0` so the deepest mapped cgroup wins.
* The number of rules depends on the configured interface globs and the cgroup depth, never
  on the number of apps: only the sets grow.
* One base chain per hook with a literal-name jump keeps the per-packet cost low (measured:
  1.87 vs 1.4 Gbit/s for equivalent accounting written less carefully).
* Restarting must not lose counters or quota usage, so reconciling never deletes the table: it
  declares what must exist (a no-op for what does) and refills the chains, in one batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TABLE_FAMILY = "inet"
TABLE_NAME = "meterguard"

# IP-layer length above which a packet must be a GSO super-packet on an interface whose MTU is
# at most 1500: its extra headers reach the wire but not the hooks, so the meter corrects them.
SUPER_PACKET_LENGTH = 1500

SET_SIZE = 65535
# The conntrack mark of a tunnel's underlay flows (VPN packets on the metered link). Far
# above the marks the ledger hands to cgroups (1, 2, 3, ...), which never reach it.
TUNNEL_MARK = 0x7FFFFF00

BASE_CHAINS = {
    # Output late (after other filters) so a packet some firewall drops is not counted as sent;
    # input early, because a downloaded byte is billed even if a local filter drops it.
    "output": "type filter hook output priority 100; policy accept;",
    "input": "type filter hook input priority -100; policy accept;",
    "forward": "type filter hook forward priority -100; policy accept;",
}
REGULAR_CHAINS = (
    "count_out", "count_in", "unmarked_out", "unmarked_in", "guard_out", "guard_in",
)

# nft keywords may not name chains or sets (a chain named `fwd` cannot be re-read), so every
# name here is checked against this pattern and a short keyword list.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:*@+-]{1,15}$")


@dataclass(frozen=True, slots=True)
class PlanGuardSpec:
    """A plan's cap in the kernel: a named quota over every metered link the plan covers.

    The quota object is `plan-NAME`; the daemon keeps its limit equal to what the plan has
    left (plus what the quota already consumed), so the cap holds with no daemon running.
    `allow_list` adds the set `allow-NAME` of marks that pass (cap action "block-others").
    `used` is only written when persisting for a reboot.
    """

    name: str
    interfaces: tuple[str, ...]
    limit: int
    allow_list: bool = False
    used: int | None = None


@dataclass(frozen=True, slots=True)
class Enforcement:
    """What stops traffic on metered links, besides counting it.

    `guards`: the plans' caps. `block_apps`: flows whose mark is in `@blocked_marks` are
    refused (per-app policy, roaming guard). `allow_only`: only marks in `@allowed_marks`
    pass (allow-list mode). `exempt_marks`: meterguard's own notifier, whose alerts must
    get out whatever is blocked; its bytes are still counted.
    """

    guards: tuple[PlanGuardSpec, ...] = ()
    block_apps: bool = False
    allow_only: bool = False
    exempt_marks: tuple[int, ...] = ()
    # Underlay of tunnels riding on metered links ("udp:1194"): their flows get TUNNEL_MARK,
    # so their bytes are known as encapsulation and not booked to the tunnel's process.
    tunnel_ports: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.guards) or self.block_apps or self.allow_only


@dataclass(frozen=True, slots=True)
class RulesetSpec:
    """What the ruleset depends on: nothing that grows with apps or devices."""

    metered_interfaces: tuple[str, ...]
    levels: int
    enforcement: Enforcement = Enforcement()

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 32:
            raise ValueError(f"cgroup levels must be 1..32, not {self.levels}")
        for name in self.metered_interfaces:
            if not _IFNAME_RE.match(name):
                raise ValueError(f"not an interface name or glob nft accepts: {name!r}")


def socket_set(direction: str) -> str:
    # One set per direction for every level: a cgroup id is unique whatever its depth, so
    # the levels share it, and one netlink dump reads them all (the meter knows each
    # cgroup's depth from its path).
    return f"socket_{direction}"


def quota_name(plan: str) -> str:
    return f"plan-{plan}"


def allow_set(plan: str) -> str:
    return f"allow-{plan}"


def quota_declaration(guard: PlanGuardSpec) -> str:
    used = f" used {guard.used} bytes" if guard.used else ""
    return f"quota {quota_name(guard.name)} {{ over {guard.limit} bytes{used} }}"


def guard_rules(guard: PlanGuardSpec, dev: str, ifname: str) -> list[str]:
    """The two rules that stop a plan's traffic on one interface once its quota is used.

    TCP is refused with a reset so apps fail at once instead of hanging (and a server
    stops sending: fewer bytes billed past the cap). The two rules never both evaluate the
    quota for one packet.
    """
    cond = f"{dev} {_quote(ifname)} "
    if guard.allow_list:
        cond += f"ct mark != @{allow_set(guard.name)} "
    quota = f'quota name "{quota_name(guard.name)}"'
    return [
        f"{cond}meta l4proto tcp {quota} reject with tcp reset",
        f"{cond}meta l4proto != tcp {quota} drop",
    ]


def guard_chain(spec: RulesetSpec, direction: str) -> list[str]:
    """`guard_out` / `guard_in`: what always passes, then app blocks, then plan caps.

    Passing (`return`, so the packet is still counted): meterguard's own notifier, whose
    alerts must get out; DNS, which the notifier's lookups go through another process for;
    and, outbound, TCP resets, so that flows ended by a block or a pause can close. Blocked
    apps come before the caps, so their refused packets do not use up a plan's quota.
    """
    enf = spec.enforcement
    dev, port = ("oifname", "dport") if direction == "out" else ("iifname", "sport")
    rules = [f"ct mark {mark:#x} return" for mark in sorted(set(enf.exempt_marks))]
    rules.append(f"meta l4proto {{ tcp, udp }} th {port} 53 return")
    if direction == "out":
        rules.append("tcp flags rst return")
    for match in (["ct mark @blocked_marks"] if enf.block_apps else []) + (
        ["ct mark != @allowed_marks"] if enf.allow_only else []
    ):
        rules.append(f"{match} meta l4proto tcp reject with tcp reset")
        rules.append(f"{match} drop")
    for guard in enf.guards:
        for ifname in guard.interfaces:
            rules += guard_rules(guard, dev, ifname)
    return rules


def set_declarations(guards: tuple[PlanGuardSpec, ...] = ()) -> dict[str, str]:
    # The policy sets always exist (cheap, and the daemon can fill them before any rule
    # refers to them); a plan's allow set only with its plan.
    """Every set and map of the table, name -> body."""
    dyn = f"flags dynamic; counter; size {SET_SIZE};"
    decl = {
        "cgroup_marks": f"type cgroupsv2 : mark; size {SET_SIZE};",
        "link_out": "typeof oifname; flags dynamic; counter; size 256;",
        "link_in": "typeof iifname; flags dynamic; counter; size 256;",
        "fwd_out": "typeof oifname; flags dynamic; counter; size 256;",
        "fwd_in": "typeof iifname; flags dynamic; counter; size 256;",
        "app_out": f"typeof oifname . ct mark; {dyn}",
        "app_in": f"typeof iifname . ct mark; {dyn}",
        "super_out": f"typeof oifname . ct mark; {dyn}",
        "blocked_marks": f"type mark; size {SET_SIZE};",
        "allowed_marks": f"type mark; size {SET_SIZE};",
    }
    decl[socket_set("out")] = f"typeof oifname . socket cgroupv2 level 1; {dyn}"
    decl[socket_set("in")] = f"typeof iifname . socket cgroupv2 level 1; {dyn}"
    for guard in guards:
        if guard.allow_list:
            decl[allow_set(guard.name)] = "type mark;"
    return decl


def _quote(ifname: str) -> str:
    return f'"{ifname}"'


def chain_rules(spec: RulesetSpec) -> dict[str, list[str]]:
    """The rules of every chain, in order.

    Upload is stopped before it is counted (a dropped packet never reaches the carrier);
    download is counted before it is stopped (it was billed on arrival).
    """
    rules: dict[str, list[str]] = {name: [] for name in (*BASE_CHAINS, *REGULAR_CHAINS)}
    guarded = spec.enforcement.active
    for ifname in spec.metered_interfaces:
        rules["output"].append(f"oifname {_quote(ifname)} jump count_out")
        rules["input"].append(f"iifname {_quote(ifname)} jump count_in")
        if guarded:
            rules["forward"].append(f"oifname {_quote(ifname)} jump guard_out")
        rules["forward"].append(f"oifname {_quote(ifname)} update @fwd_out {{ oifname }}")
        rules["forward"].append(f"iifname {_quote(ifname)} update @fwd_in {{ iifname }}")
        if guarded:
            rules["forward"].append(f"iifname {_quote(ifname)} jump guard_in")
    for direction, dev in (("out", "oifname"), ("in", "iifname")):
        count = rules[f"count_{direction}"]
        port_dir = "dport" if direction == "out" else "sport"
        for proto_port in spec.enforcement.tunnel_ports:
            proto, port = proto_port.split(":")
            count.append(f"ct mark 0 {proto} {port_dir} {port} ct mark set {TUNNEL_MARK:#x}")
        for level in range(spec.levels, 0, -1):
            count.append(f"ct mark 0 ct mark set socket cgroupv2 level {level} map @cgroup_marks")
        if guarded and direction == "out":
            count.append("jump guard_out")
        count.append(f"update @link_{direction} {{ {dev} }}")
        # goto, not jump: an unmarked packet is counted there and must not reach @app_*.
        count.append(f"ct mark 0 goto unmarked_{direction}")
        count.append(f"update @app_{direction} {{ {dev} . ct mark }}")
        unmarked = rules[f"unmarked_{direction}"]
        for level in range(1, spec.levels + 1):
            unmarked.append(
                f"update @{socket_set(direction)} "
                f"{{ {dev} . socket cgroupv2 level {level} }}"
            )
        rules[f"guard_{direction}"] = guard_chain(spec, direction)
        if guarded and direction == "in":
            count.append("jump guard_in")
            unmarked.append("jump guard_in")
    # Super-packets are only an upload matter: GRO is turned off on metered links.
    for chain in ("count_out", "unmarked_out"):
        rules[chain].append(
            f"meta length > {SUPER_PACKET_LENGTH} update @super_out {{ oifname . ct mark }}"
        )
    return rules


def render_reconcile(spec: RulesetSpec) -> str:
    """One batch that brings the table to `spec` without losing counters or elements.

    `table {...}` with declarations only adds what is missing; the chains are then flushed
    and refilled, so running it any number of times leaves exactly one copy of each rule.
    """
    lines = [f"table {TABLE_FAMILY} {TABLE_NAME} {{"]
    # A quota that exists keeps what it consumed: `add` only updates its limit.
    guards = spec.enforcement.guards
    lines.extend(f"  {quota_declaration(guard)}" for guard in guards)
    for name, body in set_declarations(guards).items():
        kind = "map" if ":" in body.split(";")[0] else "set"
        lines.append(f"  {kind} {name} {{ {body} }}")
    for name, hook in BASE_CHAINS.items():
        lines.append(f"  chain {name} {{ {hook} }}")
    for name in REGULAR_CHAINS:
        lines.append(f"  chain {name} {{ }}")
    lines.append("}")
    rules = chain_rules(spec)
    # Flush every chain before refilling any: a jump target must exist and be flushed first.
    for name in rules:
        lines.append(f"flush chain {TABLE_FAMILY} {TABLE_NAME} {name}")
    lines.append(f"table {TABLE_FAMILY} {TABLE_NAME} {{")
    for name, chain in rules.items():
        lines.append(f"  chain {name} {{")
        lines.extend(f"    {rule}" for rule in chain)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete_table() -> str:
    """Remove the table, if present, as one batch (`add` first so a missing table is no error)."""
    return f"add table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"


def render_add_marks(elements: list[tuple[str, int]]) -> str:
    """Add cgroup -> mark elements; nft 1.0.6 takes cgroups only as existing paths."""
    if not elements:
        return ""
    body = ", ".join(f'"{path}" : {mark:#x}' for path, mark in elements)
    return f"add element {TABLE_FAMILY} {TABLE_NAME} cgroup_marks {{ {body} }}\n"


def render_set_limit(plan: str, limit: int) -> str:
    """Change a plan quota's limit; the kernel keeps what it consumed (an object update)."""
    return f"add quota {TABLE_FAMILY} {TABLE_NAME} {quota_name(plan)} {{ over {limit} bytes }}\n"
