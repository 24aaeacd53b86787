"""Read and prune nftables sets over raw NETLINK_NETFILTER, without nft or libnftables.

Why not nft: when nft 1.0.6 prints a `cgroupsv2` value it walks and stats the whole cgroupfs
tree to turn the id into a path, so listing a 500-element cgroup set takes seconds, while a raw
NFT_MSG_GETSETELEM dump takes milliseconds. And nft accepts cgroup elements only as existing
paths, so it cannot delete the element of a cgroup that is gone; NFT_MSG_DELSETELEM with the
numeric key can.

Network namespaces: a netlink socket belongs to the network namespace of the thread that
created it, for its whole life. Create NftNetlink in a thread that has entered the namespace
(setns(CLONE_NEWNET) is per thread); the object may then be used from any thread, one call at
a time (it is not thread-safe).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Sequence
from types import TracebackType

from meterguard.kernel.netlink_codec import (
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_NEWSETELEM,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NlMessage,
    SetElement,
    decode_setelem_message,
    done_errno,
    encode_delsetelem_batch,
    encode_getsetelem,
    family_number,
    parse_error,
    parse_messages,
)

__all__ = ["NetlinkError", "NftNetlink", "SetElement"]

NETLINK_NETFILTER = 12  # linux/netlink.h
SOL_NETLINK = 270  # linux/socket.h
NETLINK_CAP_ACK = 10  # error replies echo only the request's header, not a whole batch
NETLINK_EXT_ACK = 11  # error replies carry the kernel's text ("No such file or directory" ...)
SO_SNDBUFFORCE = 32  # asm-generic/socket.h; with CAP_NET_ADMIN these ignore the
SO_RCVBUFFORCE = 33  # net.core.wmem_max / rmem_max caps
_BUF = 4 << 20
# A dump part never overflows the receive buffer: the kernel builds the next part only from
# recvmsg(), when the queue is at most half of sk_rcvbuf. The larger buffer is for batch replies
# (one error per failing message), which are queued at once while the batch is processed.
_TIMEOUT = 30.0  # the kernel answers synchronously; this only turns a lost reply into an error
_DUMP_ATTEMPTS = 5
_NEWSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM


class NetlinkError(OSError):
    """A netlink operation failed; `errno` is the kernel's errno, `operation` what was tried."""

    def __init__(self, err: int, operation: str, detail: str | None = None) -> None:
        text = os.strerror(err) + (f" ({detail})" if detail else "")
        super().__init__(err, f"{operation}: {text}")
        self.operation = operation
        self.detail = detail


class NftNetlink:
    """One NETLINK_NETFILTER socket in the caller's current network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))  # port id 0: the kernel assigns a unique one
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _BUF)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUF)
            # netlink_sendmsg() refuses a datagram larger than sk_sndbuf with EMSGSIZE, and a
            # batch must be one datagram to be one transaction; SO_SNDBUF is clamped to
            # net.core.wmem_max (often 208 KiB, about 10,000 cgroup keys), the FORCE variant
            # is not.
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, _BUF)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUF)
            self._sock.settimeout(_TIMEOUT)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._buf = bytearray(64 * 1024)
        # Diagnostics: the number of datagrams the last dump arrived in.
        self.last_dump_recvs = 0

    # -- public -------------------------------------------------------------------------------

    def dump_set(self, family: str, table: str, set_name: str) -> list[SetElement]:
        """All elements of a set or map, with their counters and quotas.

        Raises NetlinkError (ENOENT if the table or set does not exist in this namespace).
        Interval sets come back as the kernel stores them, a start and an end element per
        range; meterguard keeps counters only in sets without intervals.
        """
        fam = family_number(family)
        op = f"dump set {family} {table} {set_name}"
        for _attempt in range(_DUMP_ATTEMPTS):
            seq = self._next_seq()
            self._send(encode_getsetelem(fam, table, set_name, seq), op)
            parts, interrupted = self._collect_dump(seq, op)
            if not interrupted:
                try:
                    return [el for part in parts for el in decode_setelem_message(part)]
                except (ValueError, KeyError, struct.error) as exc:
                    raise NetlinkError(errno.EPROTO, op, f"undecodable element: {exc}") from exc
        raise NetlinkError(errno.EINTR, op, "the set kept changing during the dump")

    def delete_elements(
        self, family: str, table: str, set_name: str, keys: Sequence[bytes]
    ) -> None:
        """NFT_MSG_DELSETELEM inside one batch (NFNL_MSG_BATCH_BEGIN/END with res_id
        NFNL_SUBSYS_NFTABLES), atomic; raises NetlinkError on failure (read the ACKs / errors).

        Deleting a key that is not in the set fails the whole batch with ENOENT. Duplicate keys
        are sent once (a second delete of the same key in one transaction would be ENOENT).
        """
        fam = family_number(family)
        unique = list(dict.fromkeys(bytes(k) for k in keys))
        if not unique:
            return
        op = f"delete {len(unique)} element(s) from set {family} {table} {set_name}"
        batch = encode_delsetelem_batch(fam, table, set_name, unique, self._next_seq())
        self._seq = batch.end_seq
        self._send(batch.data, op)
        pending = set(batch.ack_seqs)
        failure: tuple[int, str | None] | None = None
        while pending:
            if failure is not None and not self._readable():
                # The kernel handles a batch inside sendmsg() and queues every reply before
                # it returns, so nothing more is coming: don't wait for ACKs it did not send.
                break
            for msg in self._recv(op):
                if not batch.begin_seq <= msg.seq <= batch.end_seq or msg.type != NLMSG_ERROR:
                    continue  # a stale reply to an earlier, abandoned request
                err, detail = _error_of(msg, op)
                if err and failure is None:
                    failure = (err, detail)
                if msg.seq in pending:
                    pending.discard(msg.seq)
                elif err:
                    # An error against a batch marker means the batch as a whole was refused
                    # (or its commit failed): the messages inside may never be answered.
                    pending.clear()
        if failure is not None:
            raise NetlinkError(failure[0], op, failure[1])

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NftNetlink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        # nlmsg_seq is a u32; leave room for the messages of a long batch before wrapping.
        self._seq = 1 if self._seq >= 0xFFFF0000 else self._seq + 1
        return self._seq

    def _send(self, data: bytes, op: str) -> None:
        try:
            self._sock.sendto(data, (0, 0))
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, op, "send failed") from exc

    def _readable(self) -> bool:
        return bool(select.select([self._sock], [], [], 0)[0])

    def _recv(self, op: str) -> list[NlMessage]:
        """One datagram, sized first with MSG_PEEK|MSG_TRUNC so a reply is never cut short."""
        try:
            size = self._sock.recv_into(self._buf, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
            if size > len(self._buf):
                self._buf = bytearray(size)
            size = self._sock.recv_into(self._buf, size)
        except TimeoutError as exc:
            raise NetlinkError(errno.ETIMEDOUT, op, "no reply from the kernel") from exc
        except OSError as exc:
            # ENOBUFS: replies were dropped because the receive queue was full.
            raise NetlinkError(exc.errno or errno.EIO, op, "receive failed") from exc
        try:
            return parse_messages(bytes(self._buf[:size]))
        except ValueError as exc:
            raise NetlinkError(errno.EPROTO, op, str(exc)) from exc

    def _collect_dump(self, seq: int, op: str) -> tuple[list[NlMessage], bool]:
        """Read every part of a dump up to NLMSG_DONE before decoding any of it, so that a
        decoding problem never leaves a half-read dump on the socket (the next dump request
        would then fail with EBUSY)."""
        parts: list[NlMessage] = []
        interrupted = False
        self.last_dump_recvs = 0
        while True:
            messages = self._recv(op)
            self.last_dump_recvs += 1
            for msg in messages:
                if msg.seq != seq or msg.type == NLMSG_NOOP:
                    continue
                if msg.flags & NLM_F_DUMP_INTR:
                    interrupted = True  # the set changed between parts: the parts disagree
                if msg.type == NLMSG_DONE:
                    err = done_errno(msg)
                    if err:
                        raise NetlinkError(err, op)
                    return parts, interrupted
                if msg.type == NLMSG_ERROR:
                    err, detail = _error_of(msg, op)
                    if err:  # the request was refused before the dump started
                        raise NetlinkError(err, op, detail)
                    continue
                if msg.type != _NEWSETELEM:
                    raise NetlinkError(errno.EPROTO, op, f"unexpected message type {msg.type:#x}")
                parts.append(msg)


def _error_of(msg: NlMessage, op: str) -> tuple[int, str | None]:
    try:
        return parse_error(msg)
    except ValueError as exc:
        raise NetlinkError(errno.EPROTO, op, str(exc)) from exc
