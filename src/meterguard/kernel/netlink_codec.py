"""Pure encoding and decoding of the nf_tables netlink messages that meterguard uses.

No sockets here: `netlink.py` sends and receives, this module turns bytes into values and back,
so every rule of the wire format can be unit-tested without root. Constants are copied by value
from the kernel's UAPI headers (linux/netlink.h, linux/netfilter/nfnetlink.h,
linux/netfilter/nf_tables.h), which are a stable ABI.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# linux/netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # the dumped object changed between two parts of a dump
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the echoed request was cut to its header
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSGERR_ATTR_MSG = 1

# linux/netfilter/nfnetlink.h
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNETLINK_V0 = 0

# linux/netfilter/nf_tables.h
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_USERDATA = 6
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 11
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTA_QUOTA_BYTES = 1
NFTA_QUOTA_FLAGS = 2
NFTA_QUOTA_CONSUMED = 4

FAMILIES: dict[str, int] = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}

IFNAMSIZ = 16  # linux/if.h; nft stores interface-name keys as this many bytes
# Every field of a concatenated key starts on a 32-bit register boundary (NFT_REG32_SIZE), so a
# field of n bytes occupies n rounded up to 4. Verified in tests/netns/test_netlink.py with
# `meta l4proto . ct mark`: an 8-byte key, the protocol byte followed by three zero bytes.
NFT_REG32_SIZE = 4

# Netlink headers are in host byte order; nfgenmsg.res_id is big-endian (__be16).
_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("=BB")
_BE16 = struct.Struct("!H")
# Counters and quotas are put with nla_put_be64, i.e. big-endian whatever the CPU; verified with
# byte counts above 2**32 against `nft -j` in tests/netns/test_netlink.py.
_BE64 = struct.Struct("!Q")
_U64_HOST = struct.Struct("=Q")
_U32_HOST = struct.Struct("=I")
_S32_HOST = struct.Struct("=i")
# Element nests are attributes and nla_len is a u16, so one message can carry a list of at most
# 64 KiB; stay well below that and split longer deletions over several messages of one batch.
_MAX_ELEMENTS_NEST = 60_000


@dataclass(frozen=True, slots=True)
class SetElement:
    """One element of an nftables set or map, as the kernel reports it."""

    key: bytes  # NFTA_SET_ELEM_KEY / NFTA_DATA_VALUE, raw; b"" for a catch-all element
    data: bytes | None  # NFTA_SET_ELEM_DATA / NFTA_DATA_VALUE; None for sets and verdict maps
    packets: int | None  # "counter" expression on the element, None if it has none
    bytes: int | None
    quota_used: int | None  # "quota" expression: NFTA_QUOTA_CONSUMED
    quota_limit: int | None  # NFTA_QUOTA_BYTES


@dataclass(frozen=True, slots=True)
class NlMessage:
    type: int
    flags: int
    seq: int
    payload: bytes  # everything after the 16-byte nlmsghdr


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    data: bytes
    begin_seq: int
    ack_seqs: tuple[int, ...]  # the DELSETELEM messages, each sent with NLM_F_ACK
    end_seq: int


def family_number(family: str) -> int:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"unknown nftables family {family!r} (known: {sorted(FAMILIES)})"
        ) from None


def align4(n: int) -> int:
    return (n + 3) & ~3


# ---- attributes and messages ------------------------------------------------------------------


def encode_attr(atype: int, payload: bytes, *, nested: bool = False) -> bytes:
    length = _NLATTR.size + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"netlink attribute of {length} bytes exceeds nla_len (u16)")
    flags = NLA_F_NESTED if nested else 0
    return _NLATTR.pack(length, atype | flags) + payload + bytes(align4(length) - length)


def encode_strz(atype: int, text: str) -> bytes:
    # NLA_STRING attributes of nf_tables are NUL-terminated (nla_strscpy / nla_strcmp).
    return encode_attr(atype, text.encode() + b"\0")


def encode_message(
    msg_type: int, flags: int, seq: int, family: int, attrs: bytes = b"", res_id: int = 0
) -> bytes:
    body = _NFGENMSG.pack(family, NFNETLINK_V0) + _BE16.pack(res_id) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def parse_messages(buf: bytes) -> list[NlMessage]:
    """Split one datagram into its netlink messages (a dump packs many into one)."""
    out: list[NlMessage] = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(buf):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(buf, pos)
        if length < _NLMSGHDR.size or pos + length > len(buf):
            raise ValueError(f"malformed netlink message: length {length} at offset {pos}")
        out.append(NlMessage(mtype, flags, seq, bytes(buf[pos + _NLMSGHDR.size : pos + length])))
        pos += align4(length)
    return out


def iter_attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (type, payload) of each attribute; the type has the NLA_F_* flag bits removed."""
    pos = 0
    while pos + _NLATTR.size <= len(buf):
        length, atype = _NLATTR.unpack_from(buf, pos)
        if length < _NLATTR.size or pos + length > len(buf):
            raise ValueError(f"malformed netlink attribute: length {length} at offset {pos}")
        yield atype & NLA_TYPE_MASK, buf[pos + _NLATTR.size : pos + length]
        pos += align4(length)


def parse_attrs(buf: bytes) -> dict[int, bytes]:
    return dict(iter_attrs(buf))


def parse_error(msg: NlMessage) -> tuple[int, str | None]:
    """Decode NLMSG_ERROR: (positive errno, 0 for an ACK; extended-ack text if any)."""
    if len(msg.payload) < _S32_HOST.size + _NLMSGHDR.size:
        raise ValueError("truncated NLMSG_ERROR")
    (error,) = _S32_HOST.unpack_from(msg.payload, 0)
    text: str | None = None
    if msg.flags & NLM_F_ACK_TLVS:
        # The echoed request is only its header when NETLINK_CAP_ACK is on (NLM_F_CAPPED);
        # otherwise the whole request precedes the extended-ack attributes.
        pos = _S32_HOST.size + _NLMSGHDR.size
        if not msg.flags & NLM_F_CAPPED:
            (orig_len,) = struct.unpack_from("=I", msg.payload, _S32_HOST.size)
            pos = _S32_HOST.size + align4(orig_len)
        raw = parse_attrs(msg.payload[pos:]).get(NLMSGERR_ATTR_MSG)
        if raw is not None:
            text = raw.rstrip(b"\0").decode(errors="replace")
    return -error, text


def done_errno(msg: NlMessage) -> int:
    """A dump that fails part-way ends with NLMSG_DONE carrying the negative errno."""
    if len(msg.payload) >= _S32_HOST.size:
        (value,) = _S32_HOST.unpack_from(msg.payload, 0)
        return -value if value < 0 else 0
    return 0


# ---- set elements -----------------------------------------------------------------------------


def _set_ref(table: str, set_name: str) -> bytes:
    return encode_strz(NFTA_SET_ELEM_LIST_TABLE, table) + encode_strz(
        NFTA_SET_ELEM_LIST_SET, set_name
    )


def encode_getsetelem(family: int, table: str, set_name: str, seq: int) -> bytes:
    attrs = _set_ref(table, set_name)
    msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return encode_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, family, attrs)


def _element_keyonly(key: bytes) -> bytes:
    value = encode_attr(NFTA_DATA_VALUE, key)
    return encode_attr(
        NFTA_LIST_ELEM, encode_attr(NFTA_SET_ELEM_KEY, value, nested=True), nested=True
    )


def encode_delsetelem_batch(
    family: int, table: str, set_name: str, keys: Sequence[bytes], first_seq: int
) -> EncodedBatch:
    """One nfnetlink batch deleting `keys`; the kernel applies all of it or none of it."""
    if not keys:
        raise ValueError("no keys to delete")
    head = _set_ref(table, set_name)
    chunks: list[list[bytes]] = [[]]
    size = 0
    for key in keys:
        if not key:
            raise ValueError("an element key cannot be empty")
        elem = _element_keyonly(key)
        if size + len(elem) > _MAX_ELEMENTS_NEST and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(elem)
        size += len(elem)
    # The batch markers carry the subsystem id in res_id, big-endian, so nfnetlink knows which
    # subsystem's commit/abort applies to the messages between them.
    seq = first_seq
    parts = [encode_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    ack_seqs: list[int] = []
    msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM
    for chunk in chunks:
        seq += 1
        elements = encode_attr(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(chunk), nested=True)
        parts.append(
            encode_message(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, family, head + elements)
        )
        ack_seqs.append(seq)
    seq += 1
    parts.append(
        encode_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)
    )
    return EncodedBatch(b"".join(parts), first_seq, tuple(ack_seqs), seq)


def _data_value(nest: bytes) -> bytes | None:
    return parse_attrs(nest).get(NFTA_DATA_VALUE)


def _decode_expr(nest: bytes) -> tuple[str, dict[int, bytes]]:
    attrs = parse_attrs(nest)
    name = attrs.get(NFTA_EXPR_NAME, b"").rstrip(b"\0").decode(errors="replace")
    return name, parse_attrs(attrs.get(NFTA_EXPR_DATA, b""))


def _be64(attrs: dict[int, bytes], atype: int) -> int | None:
    raw = attrs.get(atype)
    return None if raw is None else int(_BE64.unpack(raw)[0])


def decode_element(nest: bytes) -> SetElement:
    attrs = parse_attrs(nest)
    key = _data_value(attrs[NFTA_SET_ELEM_KEY]) if NFTA_SET_ELEM_KEY in attrs else None
    data = _data_value(attrs[NFTA_SET_ELEM_DATA]) if NFTA_SET_ELEM_DATA in attrs else None
    # The kernel reports a single element expression as NFTA_SET_ELEM_EXPR and two or more
    # (e.g. `counter quota ...`) as a list in NFTA_SET_ELEM_EXPRESSIONS.
    exprs: list[tuple[str, dict[int, bytes]]] = []
    if NFTA_SET_ELEM_EXPR in attrs:
        exprs.append(_decode_expr(attrs[NFTA_SET_ELEM_EXPR]))
    for atype, sub in iter_attrs(attrs.get(NFTA_SET_ELEM_EXPRESSIONS, b"")):
        if atype == NFTA_LIST_ELEM:
            exprs.append(_decode_expr(sub))
    packets = nbytes = used = limit = None
    for name, values in exprs:
        if name == "counter":
            packets = _be64(values, NFTA_COUNTER_PACKETS)
            nbytes = _be64(values, NFTA_COUNTER_BYTES)
        elif name == "quota":
            used = _be64(values, NFTA_QUOTA_CONSUMED)
            limit = _be64(values, NFTA_QUOTA_BYTES)
    return SetElement(key or b"", data, packets, nbytes, used, limit)


def decode_setelem_message(msg: NlMessage) -> list[SetElement]:
    """Elements in one NFT_MSG_NEWSETELEM part of a GETSETELEM dump."""
    attrs = parse_attrs(msg.payload[4:])  # skip the 4-byte nfgenmsg
    out: list[SetElement] = []
    for atype, nest in iter_attrs(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
        if atype == NFTA_LIST_ELEM:
            out.append(decode_element(nest))
    return out


# ---- keys -------------------------------------------------------------------------------------


def _expect_len(key: bytes, size: int, what: str) -> None:
    if len(key) != size:
        raise ValueError(f"{what} key must be {size} bytes, got {len(key)}")


def decode_cgroup_id(key: bytes) -> int:
    # nft_socket stores cgroup_id() as a u64 in the CPU's byte order; verified against the
    # inode number of the cgroup directory in tests/netns/test_netlink.py.
    _expect_len(key, 8, "cgroupsv2")
    return int(_U64_HOST.unpack(key)[0])


def encode_cgroup_id(cgid: int) -> bytes:
    return _U64_HOST.pack(cgid)


def decode_u32_host(value: bytes) -> int:
    # meta mark and ct mark are u32 registers in the CPU's byte order (nft's mark datatype is
    # BYTEORDER_HOST_ENDIAN); verified with mark 0x01020304 in tests/netns/test_netlink.py.
    _expect_len(value, 4, "u32")
    return int(_U32_HOST.unpack(value)[0])


def encode_u32_host(value: int) -> bytes:
    return _U32_HOST.pack(value)


def decode_ifname(key: bytes) -> str:
    # iifname/oifname keys are the IFNAMSIZ-byte name buffer padded with NULs; verified in
    # tests/netns/test_netlink.py. surrogateescape round-trips names that are not UTF-8.
    _expect_len(key, IFNAMSIZ, "interface name")
    return key.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def encode_ifname(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise ValueError(f"not a valid interface name: {name!r}")
    return raw.ljust(IFNAMSIZ, b"\0")


def split_concat(key: bytes, widths: Sequence[int]) -> list[bytes]:
    """Split a concatenated key into fields of the given widths (without their padding)."""
    if any(w <= 0 for w in widths):
        raise ValueError(f"field widths must be positive: {list(widths)}")
    expected = sum(align4(w) for w in widths)
    if len(key) != expected:
        raise ValueError(f"concatenated key of {len(key)} bytes, expected {expected} for {widths}")
    fields: list[bytes] = []
    pos = 0
    for width in widths:
        fields.append(key[pos : pos + width])
        pos += align4(width)
    return fields


def join_concat(fields: Sequence[bytes]) -> bytes:
    """Build a concatenated key: the inverse of split_concat, zero-padding each field."""
    return b"".join(f + bytes(align4(len(f)) - len(f)) for f in fields)
