"""Message ids: random UUIDs (version 4) cut from a buffer of the system's randomness.

``uuid.uuid4`` reads 16 bytes with a system call for every id, and lets go of the GIL
for it: in a sender whose publisher thread is busy, each id then waited for that
thread's turn to end (12 % of ``send_many``'s time, building its envelopes). One read
of 4 KiB makes 256 ids. The bytes are the same ``os.urandom`` ones; a forked child
drops the buffer it inherited, so two processes never hand out the same ids.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

__all__ = ["new_id"]

_CHUNK = 4096  # 256 ids a read

_lock = threading.Lock()
_buffer = b""
_offset = 0


def new_id() -> UUID:
    """A new random UUID (version 4), as ``uuid.uuid4`` makes."""
    global _buffer, _offset
    with _lock:
        if _offset >= len(_buffer):
            _buffer, _offset = os.urandom(_CHUNK), 0
        raw = _buffer[_offset : _offset + 16]
        _offset += 16
    return UUID(bytes=raw, version=4)


def _forget_after_fork() -> None:
    global _lock, _buffer, _offset
    _lock, _buffer, _offset = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget_after_fork)
