"""Length-prefixed frames over a socket: the link between a pool and a worker.

A few lines instead of ``multiprocessing.connection``, whose import alone
would add tens of milliseconds to every worker's start-up.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["Channel"]

_HEADER = struct.Struct("!Q")
#: frames up to this size go out in one write, header included
_SMALL = 1 << 16


class Channel:
    """One end of a connected stream socket, sending and receiving whole frames."""

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self._socket.fileno()

    def send_bytes(self, data: bytes) -> None:
        header = _HEADER.pack(len(data))
        if len(data) <= _SMALL:
            self._socket.sendall(header + data)
        else:
            self._socket.sendall(header)
            self._socket.sendall(data)

    def recv_bytes(self) -> bytearray:
        """The next frame. Raises EOFError when the other end has closed."""
        (size,) = _HEADER.unpack(self._receive(_HEADER.size))
        return self._receive(size)

    def _receive(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = self._socket.recv_into(view[received:])
            if count == 0:
                raise EOFError("the other end of the channel closed")
            received += count
        return buffer

    def close(self) -> None:
        self._socket.close()
