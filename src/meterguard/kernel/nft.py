"""Running nftables batches: libnftables through ctypes, the `nft` binary as the fallback.

Every change meterguard makes is one batch of nft text: libnftables (and `nft -f -`) apply a
whole buffer as one transaction, so a failing command applies nothing. Text rather than JSON
because nft 1.0.6's JSON parser cannot express `socket cgroupv2` and rejects the `dynamic`
set flag (see docs/how-it-works.md).

The official Python binding is not on PyPI and its upstream file uses symbols 1.0.6 lacks,
so this shim binds only the oldest entry points of libnftables.so.1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

# Output flags from <nftables/libnftables.h>; stable since libnftables 0.9.
_NFT_CTX_OUTPUT_JSON = 1 << 4
_NFT_CTX_OUTPUT_TERSE = 1 << 8


class NftError(RuntimeError):
    """A batch was refused; nothing of it was applied."""

    def __init__(self, message: str, script: str) -> None:
        super().__init__(message.strip() or "nft failed with no message")
        self.script = script


class NftBackend(Protocol):
    """Applies nft text as one atomic transaction and returns nft's output."""

    def run(self, script: str, *, json_output: bool = False, terse: bool = False) -> str: ...


class LibNftables:
    """libnftables.so.1 through ctypes, one context per instance.

    A context acts in the network namespace of the thread that uses it, which is why the
    daemon is started inside the namespace it guards rather than switching namespaces.
    """

    def __init__(self, library: str | None = None) -> None:
        name = library or ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._base_flags = int(lib.nft_ctx_output_get_flags(self._ctx))
        # One context is not safe to share between threads.
        self._lock = threading.Lock()

    def run(self, script: str, *, json_output: bool = False, terse: bool = False) -> str:
        flags = self._base_flags
        if json_output:
            flags |= _NFT_CTX_OUTPUT_JSON
        if terse:
            flags |= _NFT_CTX_OUTPUT_TERSE
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        # Check the return code before parsing: a failed batch may still print partial output.
        if rc != 0:
            raise NftError(err, script)
        return out

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


class NftBinary:
    """The `nft` command fed the same text on stdin: used when libnftables cannot be loaded."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("nft") or "/usr/sbin/nft"
        self._binary = found

    def run(self, script: str, *, json_output: bool = False, terse: bool = False) -> str:
        argv = [self._binary]
        if json_output:
            argv.append("-j")
        if terse:
            argv.append("-t")
        argv += ["-f", "-"]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise NftError(proc.stderr, script)
        return proc.stdout


@dataclass
class FakeNft:
    """An NftBackend for tests of code above the kernel: records every batch it is given.

    `fail_next` makes the next batch fail as the kernel would refuse it; `responses` maps a
    script to the output it returns (e.g. a JSON listing).
    """

    batches: list[str] = field(default_factory=list)
    fail_next: str | None = None
    responses: dict[str, str] = field(default_factory=dict)

    def run(self, script: str, *, json_output: bool = False, terse: bool = False) -> str:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise NftError(message, script)
        self.batches.append(script)
        return self.responses.get(script, "")


def default_backend() -> NftBackend:
    """libnftables when it loads, otherwise the nft binary."""
    try:
        return LibNftables()
    except OSError:
        return NftBinary()


def run_json(backend: NftBackend, command: str, *, terse: bool = True) -> list[dict[str, Any]]:
    """Run a listing command and return the objects of its JSON `nftables` array."""
    out = backend.run(command, json_output=True, terse=terse)
    if not out.strip():
        return []
    doc = json.loads(out)
    items: list[dict[str, Any]] = doc.get("nftables", [])
    return items
