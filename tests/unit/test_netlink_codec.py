"""Pure tests of the nf_tables netlink wire format (no sockets, no root).

What the kernel really does with these bytes is checked in tests/netns/test_netlink.py.
"""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterguard.kernel import netlink_codec as c
from meterguard.kernel.netlink_codec import SetElement


def _be64(n: int) -> bytes:
    return struct.pack("!Q", n)


def _expr(name: str, attrs: bytes) -> bytes:
    return c.encode_strz(c.NFTA_EXPR_NAME, name) + c.encode_attr(
        c.NFTA_EXPR_DATA, attrs, nested=True
    )


def _counter(packets: int, nbytes: int) -> bytes:
    return _expr(
        "counter",
        c.encode_attr(c.NFTA_COUNTER_BYTES, _be64(nbytes))
        + c.encode_attr(c.NFTA_COUNTER_PACKETS, _be64(packets)),
    )


def _quota(limit: int, used: int) -> bytes:
    return _expr(
        "quota",
        c.encode_attr(c.NFTA_QUOTA_BYTES, _be64(limit))
        + c.encode_attr(c.NFTA_QUOTA_FLAGS, struct.pack("!I", 0))
        + c.encode_attr(c.NFTA_QUOTA_CONSUMED, _be64(used)),
    )


def _value(nest_type: int, raw: bytes) -> bytes:
    return c.encode_attr(nest_type, c.encode_attr(c.NFTA_DATA_VALUE, raw), nested=True)


def _newsetelem(seq: int, elements: list[bytes], flags: int = c.NLM_F_MULTI) -> bytes:
    body = b"".join(c.encode_attr(c.NFTA_LIST_ELEM, e, nested=True) for e in elements)
    attrs = (
        c.encode_strz(c.NFTA_SET_ELEM_LIST_TABLE, "t")
        + c.encode_strz(c.NFTA_SET_ELEM_LIST_SET, "s")
        + c.encode_attr(c.NFTA_SET_ELEM_LIST_ELEMENTS, body, nested=True)
    )
    mtype = (c.NFNL_SUBSYS_NFTABLES << 8) | c.NFT_MSG_NEWSETELEM
    return c.encode_message(mtype, flags, seq, 1, attrs)


# ---- attributes and messages ------------------------------------------------------------------


def test_attr_is_padded_to_four_bytes_and_nested_flag_is_stripped_on_read() -> None:
    raw = c.encode_attr(3, b"abcde", nested=True)
    assert raw == struct.pack("=HH", 9, 3 | c.NLA_F_NESTED) + b"abcde\0\0\0"
    assert list(c.iter_attrs(raw)) == [(3, b"abcde")]


def test_strz_attributes_are_nul_terminated() -> None:
    assert c.encode_strz(1, "ab") == struct.pack("=HH", 7, 1) + b"ab\0\0"


@given(st.lists(st.tuples(st.integers(0, c.NLA_TYPE_MASK), st.binary(max_size=40)), max_size=8))
def test_attributes_round_trip(items: list[tuple[int, bytes]]) -> None:
    buf = b"".join(c.encode_attr(t, p) for t, p in items)
    assert list(c.iter_attrs(buf)) == items


def test_oversized_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="nla_len"):
        c.encode_attr(1, bytes(0xFFFF))


def test_malformed_attribute_and_message_are_refused() -> None:
    with pytest.raises(ValueError):
        list(c.iter_attrs(struct.pack("=HH", 40, 1) + b"xx"))
    with pytest.raises(ValueError):
        c.parse_messages(struct.pack("=IHHII", 100, 3, 0, 1, 0))


def test_message_header_and_nfgenmsg_layout() -> None:
    raw = c.encode_message(0x1234, 0x5, 77, 10, b"", res_id=c.NFNL_SUBSYS_NFTABLES)
    # nlmsghdr in host order; nfgenmsg: family, version 0, res_id big-endian.
    assert raw == struct.pack("=IHHII", 20, 0x1234, 5, 77, 0) + bytes([10, 0, 0, 10])


def test_several_messages_in_one_datagram() -> None:
    one = _newsetelem(5, [_value(c.NFTA_SET_ELEM_KEY, b"\1\2\3\4")])
    done = struct.pack("=IHHIIi", 20, c.NLMSG_DONE, c.NLM_F_MULTI, 5, 0, 0)
    msgs = c.parse_messages(one + done)
    assert [(m.type, m.seq) for m in msgs] == [((10 << 8) | 12, 5), (c.NLMSG_DONE, 5)]
    assert c.done_errno(msgs[1]) == 0


def test_done_carrying_an_error() -> None:
    done = c.parse_messages(struct.pack("=IHHIIi", 20, c.NLMSG_DONE, c.NLM_F_MULTI, 5, 0, -16))
    assert c.done_errno(done[0]) == 16


def test_ack_and_capped_error_with_extended_ack_text() -> None:
    request_header = struct.pack("=IHHII", 64, 0xA0E, 5, 9, 0)
    ack = struct.pack("=i", 0) + request_header
    msg = c.parse_messages(struct.pack("=IHHII", 16 + len(ack), c.NLMSG_ERROR, 0x100, 9, 0) + ack)
    assert c.parse_error(msg[0]) == (0, None)
    tlv = c.encode_strz(c.NLMSGERR_ATTR_MSG, "bad key")
    err = struct.pack("=i", -2) + request_header + tlv
    flags = c.NLM_F_CAPPED | c.NLM_F_ACK_TLVS
    msg = c.parse_messages(struct.pack("=IHHII", 16 + len(err), c.NLMSG_ERROR, flags, 9, 0) + err)
    assert c.parse_error(msg[0]) == (2, "bad key")


def test_uncapped_error_skips_the_echoed_request() -> None:
    request = c.encode_message(0xA0E, 5, 9, 1, c.encode_strz(1, "x" * 10))
    tlv = c.encode_strz(c.NLMSGERR_ATTR_MSG, "why")
    err = struct.pack("=i", -22) + request + tlv
    raw = struct.pack("=IHHII", 16 + len(err), c.NLMSG_ERROR, c.NLM_F_ACK_TLVS, 9, 0) + err
    assert c.parse_error(c.parse_messages(raw)[0]) == (22, "why")


# ---- requests ---------------------------------------------------------------------------------


def test_getsetelem_is_a_dump_request_naming_table_and_set() -> None:
    msg = c.parse_messages(c.encode_getsetelem(c.FAMILIES["ip6"], "tbl", "st", 42))[0]
    assert msg.type == (10 << 8) | 13
    assert msg.flags == c.NLM_F_REQUEST | c.NLM_F_DUMP
    assert msg.seq == 42
    assert msg.payload[:4] == bytes([10, 0, 0, 0])
    assert c.parse_attrs(msg.payload[4:]) == {1: b"tbl\0", 2: b"st\0"}


def _deleted_keys(msg: c.NlMessage) -> list[bytes]:
    attrs = c.parse_attrs(msg.payload[4:])
    keys = []
    for _t, elem in c.iter_attrs(attrs[c.NFTA_SET_ELEM_LIST_ELEMENTS]):
        key = c.parse_attrs(c.parse_attrs(elem)[c.NFTA_SET_ELEM_KEY])[c.NFTA_DATA_VALUE]
        keys.append(key)
    return keys


def test_delete_batch_framing() -> None:
    batch = c.encode_delsetelem_batch(1, "t", "s", [b"\1" * 8, b"\2" * 8], first_seq=100)
    msgs = c.parse_messages(batch.data)
    assert [m.type for m in msgs] == [0x10, (10 << 8) | 14, 0x11]
    assert [m.seq for m in msgs] == [100, 101, 102]
    assert (batch.begin_seq, batch.ack_seqs, batch.end_seq) == (100, (101,), 102)
    for marker in (msgs[0], msgs[2]):
        # res_id of the batch markers names the nf_tables subsystem, big-endian.
        assert marker.payload == bytes([0, 0, 0, 10])
        assert marker.flags == c.NLM_F_REQUEST
    assert msgs[1].flags == c.NLM_F_REQUEST | c.NLM_F_ACK
    assert msgs[1].payload[0] == 1
    assert _deleted_keys(msgs[1]) == [b"\1" * 8, b"\2" * 8]


def test_long_deletions_are_split_over_messages_of_one_batch() -> None:
    keys = [c.encode_cgroup_id(i) for i in range(10_000)]
    batch = c.encode_delsetelem_batch(1, "t", "s", keys, first_seq=1)
    msgs = c.parse_messages(batch.data)
    assert len(batch.ack_seqs) > 1
    assert msgs[0].type == c.NFNL_MSG_BATCH_BEGIN and msgs[-1].type == c.NFNL_MSG_BATCH_END
    got = [k for m in msgs[1:-1] for k in _deleted_keys(m)]
    assert got == keys


def test_delete_batch_refuses_nothing_or_empty_keys() -> None:
    with pytest.raises(ValueError):
        c.encode_delsetelem_batch(1, "t", "s", [], first_seq=1)
    with pytest.raises(ValueError):
        c.encode_delsetelem_batch(1, "t", "s", [b""], first_seq=1)


def test_family_names() -> None:
    assert c.family_number("inet") == 1
    assert c.family_number("ip") == 2
    assert c.family_number("ip6") == 10
    assert c.family_number("netdev") == 5
    assert c.family_number("bridge") == 7
    assert c.family_number("arp") == 3
    with pytest.raises(ValueError, match="unknown nftables family"):
        c.family_number("ipv4")


# ---- elements ---------------------------------------------------------------------------------


def test_decode_elements_with_single_and_listed_expressions() -> None:
    counter_only = _value(c.NFTA_SET_ELEM_KEY, b"k1k1") + c.encode_attr(
        c.NFTA_SET_ELEM_EXPR, _counter(3, 300), nested=True
    )
    listed = c.encode_attr(c.NFTA_LIST_ELEM, _counter(2**40, 2**50), nested=True) + c.encode_attr(
        c.NFTA_LIST_ELEM, _quota(10**6, 1234), nested=True
    )
    both = (
        _value(c.NFTA_SET_ELEM_KEY, b"k2k2")
        + _value(c.NFTA_SET_ELEM_DATA, b"\4\3\2\1")
        + c.encode_attr(c.NFTA_SET_ELEM_EXPRESSIONS, listed, nested=True)
    )
    quota_only = _value(c.NFTA_SET_ELEM_KEY, b"k3k3") + c.encode_attr(
        c.NFTA_SET_ELEM_EXPR, _quota(5, 6), nested=True
    )
    bare = _value(c.NFTA_SET_ELEM_KEY, b"k4k4")
    msg = c.parse_messages(_newsetelem(1, [counter_only, both, quota_only, bare]))[0]
    assert c.decode_setelem_message(msg) == [
        SetElement(b"k1k1", None, 3, 300, None, None),
        SetElement(b"k2k2", b"\4\3\2\1", 2**40, 2**50, 1234, 10**6),
        SetElement(b"k3k3", None, None, None, 6, 5),
        SetElement(b"k4k4", None, None, None, None, None),
    ]


def test_unknown_expressions_and_attributes_are_ignored() -> None:
    elem = (
        _value(c.NFTA_SET_ELEM_KEY, b"abcd")
        + c.encode_attr(c.NFTA_SET_ELEM_EXPR, _expr("limit", c.encode_attr(1, b"zz")), nested=True)
        + c.encode_attr(c.NFTA_SET_ELEM_USERDATA, b"comment")
    )
    msg = c.parse_messages(_newsetelem(1, [elem]))[0]
    assert c.decode_setelem_message(msg) == [SetElement(b"abcd", None, None, None, None, None)]


def test_catch_all_element_has_an_empty_key() -> None:
    elem = c.encode_attr(c.NFTA_SET_ELEM_FLAGS, struct.pack("!I", 2))
    msg = c.parse_messages(_newsetelem(1, [elem]))[0]
    assert c.decode_setelem_message(msg)[0].key == b""


# ---- keys -------------------------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_cgroup_id_round_trip_in_host_order(cgid: int) -> None:
    key = c.encode_cgroup_id(cgid)
    assert key == cgid.to_bytes(8, sys.byteorder)
    assert c.decode_cgroup_id(key) == cgid


@given(st.integers(0, 2**32 - 1))
def test_u32_round_trip_in_host_order(value: int) -> None:
    raw = c.encode_u32_host(value)
    assert raw == value.to_bytes(4, sys.byteorder)
    assert c.decode_u32_host(raw) == value


def test_wrong_key_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        c.decode_cgroup_id(b"\0" * 4)
    with pytest.raises(ValueError):
        c.decode_u32_host(b"\0" * 8)
    with pytest.raises(ValueError):
        c.decode_ifname(b"lo\0\0")


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="\0/", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=15,
    ).filter(lambda s: len(s.encode()) < 16)
)
def test_ifname_round_trip(name: str) -> None:
    key = c.encode_ifname(name)
    assert len(key) == 16
    assert c.decode_ifname(key) == name


def test_ifname_layout_and_limits() -> None:
    assert c.encode_ifname("wwan0") == b"wwan0" + bytes(11)
    for bad in ("", "x" * 16, "a\0b"):
        with pytest.raises(ValueError):
            c.encode_ifname(bad)


def test_split_concat_skips_padding_to_four_bytes() -> None:
    key = b"lo" + bytes(14) + b"\4\3\2\1"
    assert c.split_concat(key, [16, 4]) == [b"lo" + bytes(14), b"\4\3\2\1"]
    assert c.split_concat(b"\x11\0\0\0\7\0\0\0", [1, 4]) == [b"\x11", b"\7\0\0\0"]
    assert c.split_concat(bytes(range(8)) + b"\1\2\3\4", [6, 4]) == [bytes(range(6)), b"\1\2\3\4"]
    with pytest.raises(ValueError):
        c.split_concat(b"\x11\7\0\0\0", [1, 4])
    with pytest.raises(ValueError):
        c.split_concat(b"", [0])


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5))
def test_concat_round_trip(fields: list[bytes]) -> None:
    key = c.join_concat(fields)
    assert len(key) % 4 == 0
    assert c.split_concat(key, [len(f) for f in fields]) == fields
