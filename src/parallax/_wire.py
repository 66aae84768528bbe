"""Length-prefixed frames over a file descriptor: the link between a pool and a worker.

A few lines of ``os.readv``/``os.write`` instead of ``multiprocessing.connection``
or even the ``socket`` module, whose imports alone would add milliseconds to
every worker's start-up. The descriptor is one end of a connected socket pair.

A frame may carry descriptors (the shared-memory segments of ``_shm``): its
header says how many, and they follow it as one byte with ``SCM_RIGHTS``
before the frame's bytes. Only then is ``socket`` imported, so a worker that
never sees a large buffer never loads it.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

__all__ = ["Channel"]

_HEADER = struct.Struct("!Q")
#: the header's top byte counts the frame's descriptors, the rest is its size
_SIZE_BITS = 56
_SIZE_MASK = (1 << _SIZE_BITS) - 1
#: descriptors one frame may carry
MAX_FDS = 16
#: frames up to this size go out in one write, header included
_SMALL = 1 << 16

_socket: ModuleType | None = None


def _socket_module() -> ModuleType:
    global _socket
    if _socket is None:
        import socket

        _socket = socket
    return _socket


class Channel:
    """One end of a connected stream, sending and receiving whole frames.

    Owns its descriptor: :meth:`close` closes it.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def send_bytes(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one frame, and ``fds`` beside it (the receiver gets duplicates;
        ours stay open)."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"a frame carries at most {MAX_FDS} descriptors")
        header = _HEADER.pack(len(data) | len(fds) << _SIZE_BITS)
        if fds:
            self._write(header)
            self._send_fds(fds)
            self._write(data)
        elif len(data) <= _SMALL:
            self._write(header + data)
        else:
            self._write(header)
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _send_fds(self, fds: Sequence[int]) -> None:
        socket = _socket_module()
        sock = socket.socket(fileno=self._fd)
        try:
            socket.send_fds(sock, [b"\0"], list(fds))
        finally:
            sock.detach()  # the descriptor stays ours

    def recv_bytes(self) -> bytearray:
        """The next frame, which must carry no descriptors. Raises EOFError when
        the other end has closed."""
        frame, fds = self.recv_frame()
        if fds:
            for fd in fds:
                os.close(fd)
            raise OSError(f"a frame came with {len(fds)} unexpected descriptor(s)")
        return frame

    def recv_frame(self) -> tuple[bytearray, list[int]]:
        """The next frame and the descriptors it carries (now the caller's to
        close). Raises EOFError when the other end has closed."""
        (word,) = _HEADER.unpack(self._receive(_HEADER.size))
        count = word >> _SIZE_BITS
        fds = self._receive_fds(count) if count else []
        try:
            return self._receive(word & _SIZE_MASK), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _receive_fds(self, count: int) -> list[int]:
        socket = _socket_module()
        sock = socket.socket(fileno=self._fd)
        try:
            flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)  # not handed to subprocesses
            data, fds, msg_flags, _ = socket.recv_fds(sock, 1, MAX_FDS, flags)
        finally:
            sock.detach()
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the other end of the channel closed")
        if len(fds) != count or msg_flags & getattr(socket, "MSG_CTRUNC", 0):
            for fd in fds:
                os.close(fd)
            raise OSError(f"expected {count} descriptor(s) with a frame, got {len(fds)}")
        return list(fds)

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
