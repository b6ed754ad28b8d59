"""Keeping the agent's resident memory flat on glibc.

A statements collection over 5,000 entries allocates a few tens of MB of short-lived
Python objects. glibc gives every thread that allocates its own malloc arena and keeps
freed memory in them, so with a pool of collector threads the RSS ratchets up to the sum
of every thread's peak. Two standard remedies, both no-ops off glibc:

* cap the number of arenas at start-up (``mallopt(M_ARENA_MAX, 2)``, the same as the
  ``MALLOC_ARENA_MAX=2`` environment variable, which still wins when set);
* after a collection, hand freed memory back to the kernel (``malloc_trim(0)``), at most
  every few seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
import time

M_ARENA_MAX = -8
_libc: ctypes.CDLL | None = None
_lock = threading.Lock()
_last_trim = 0.0


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, TypeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                _libc = libc
    return _libc


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call before starting threads). True when applied."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim(min_interval: float = 5.0) -> None:
    """Return freed heap memory to the kernel, at most once per ``min_interval`` seconds."""
    global _last_trim
    libc = _glibc()
    if libc is None:
        return
    with _lock:
        now = time.monotonic()
        if now - _last_trim < min_interval:
            return
        _last_trim = now
    libc.malloc_trim(0)
