"""Length-prefixed frames over a file descriptor: the link between a pool and a worker.

A few lines of ``os.readv``/``os.write`` instead of ``multiprocessing.connection``
or even the ``socket`` module, whose imports alone would add milliseconds to
every worker's start-up. The descriptor is one end of a connected socket pair.
"""

from __future__ import annotations

import os
import struct

__all__ = ["Channel"]

_HEADER = struct.Struct("!Q")
#: frames up to this size go out in one write, header included
_SMALL = 1 << 16


class Channel:
    """One end of a connected stream, sending and receiving whole frames.

    Owns its descriptor: :meth:`close` closes it.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def send_bytes(self, data: bytes) -> None:
        header = _HEADER.pack(len(data))
        if len(data) <= _SMALL:
            self._write(header + data)
        else:
            self._write(header)
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def recv_bytes(self) -> bytearray:
        """The next frame. Raises EOFError when the other end has closed."""
        (size,) = _HEADER.unpack(self._receive(_HEADER.size))
        return self._receive(size)

    def _receive(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = os.readv(self._fd, [view[received:]])
            if count == 0:
                raise EOFError("the other end of the channel closed")
            received += count
        return buffer

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
