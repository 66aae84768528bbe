"""Function payloads kept in shared memory for a next run over the same objects.

A process pool writes a run's function (a ``partial`` over a large array, a
model's bound method) into shared memory once per run (``_shm``). A next run
over the same, unchanged objects need not copy them again: :class:`Keeper`
keeps the payload's segment sealed (``F_SEAL_WRITE``: nobody can change its
bytes, and every worker's copy-on-write mapping of it still works) and sends
it again once the objects are shown to be the same (identity, by weak
references) holding the same bytes (``memcmp``, without the GIL).

The caller's side only: the pool (``backends._process``) has one.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref

from ._shm import Pickled, Pieces, Segment, buffer_offsets, oldest_over

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Keeper"]


class Keeper:
    """Segments of function payloads kept for a next run over the same objects.

    A run's function (a ``partial`` over a large array, a model's method) is
    written to a segment once per run. Writing it again for the next run
    over the same, unchanged object costs the full copy into fresh pages
    (256 MB: about 100 ms); comparing the object's bytes with a kept copy
    costs a read of both (35 ms the first time, mapping the copy; 13 ms
    after, measured). So a payload segment is
    sealed (``F_SEAL_WRITE`` and the rest: its bytes can never change, and
    every worker's copy-on-write mapping of it still works) and kept, and a
    next payload whose large buffers come from the same objects (by
    identity), of the same sizes and the same bytes (compared, ``memcmp``)
    is sent with the kept segment instead of a new one.

    Kept while every object its buffers came from lives (weak references:
    one dies, the segment goes) and within ``keep`` segments and
    ``keep_bytes`` bytes (the oldest go first): a kept copy doubles the
    memory of its object while both live. Thread-safe.
    """

    __slots__ = ("_entries", "_keep", "_keep_bytes", "_lock")

    def __init__(self, keep: int, keep_bytes: int) -> None:
        self._entries: list[_Kept] = []
        self._keep = keep
        self._keep_bytes = keep_bytes
        # Reentrant: an object dying under the lock (a collection run by an
        # allocation there) calls back into _drop on the same thread.
        self._lock = threading.RLock()

    def write(self, pickled: Pickled) -> tuple[bytes, Segment | Pieces | None]:
        """:meth:`Pickled.write`, with a kept segment if one holds the same bytes
        (what is returned is the caller's own, to close, either way); a large
        payload goes in several files (:meth:`Pickled.write_sealable`).

        Raises:
            Exception: as :meth:`Pickled.write`.
        """
        buffers = pickled.buffers
        if not buffers:
            return pickled.write()
        sizes = [raw.nbytes for raw in buffers]
        exporters = [raw.obj for raw in buffers]
        with self._lock:
            candidates = [entry for entry in self._entries if entry.holds(sizes, exporters)]
        for entry in candidates:
            try:
                sent = entry.duplicate() if entry.same_bytes(buffers) else None
            except (OSError, ValueError):  # (closed meanwhile, out of mappings ...)
                sent = None
            if sent is not None:
                with self._lock:  # the most recently used: the last to go
                    if entry in self._entries:
                        self._entries.remove(entry)
                        self._entries.append(entry)
                return pickled.framed(len(entry.segments) if entry.pieces else 0), sent
            self._drop(entry)  # its objects changed since: a stale copy
        blob, written = pickled.write_sealable()
        if written is not None:
            self._keep_copy(written, sizes, exporters)
        return blob, written

    def _keep_copy(self, written: Segment | Pieces, sizes: list[int],
                   exporters: list[Any]) -> None:
        """Keep a copy of ``written`` (sealed first) for as long as ``exporters`` live."""
        if written.size > self._keep_bytes:
            return
        def dead(_: Any) -> None:
            self._drop(entry)

        try:
            refs = [weakref.ref(exporter, dead) for exporter in exporters]
        except TypeError:  # (a bytearray, say): no way to tell when it goes
            return
        segments = written.segments if isinstance(written, Pieces) else [written]
        kept: list[Segment] = []
        try:
            for segment in segments:
                _seal(segment.fd)
                kept.append(Segment(os.dup(segment.fd), segment.size))
        except OSError:  # (a kernel without seals): not kept
            for segment in kept:
                segment.close()
            return
        entry = _Kept(kept, isinstance(written, Pieces), sizes, refs)
        with self._lock:
            self._entries.append(entry)
            dropped = oldest_over(self._entries, self._keep, self._keep_bytes)
        for old in dropped:
            old.close()

    def _drop(self, entry: _Kept) -> None:
        with self._lock:
            if entry not in self._entries:
                return
            self._entries.remove(entry)
        entry.close()

    def close(self) -> None:
        """Let every kept segment go (the pool shuts down)."""
        with self._lock:
            entries, self._entries = self._entries, []
        for entry in entries:
            entry.close()

    def __len__(self) -> int:
        return len(self._entries)


class _Kept:
    """A sealed payload segment of :class:`Keeper` (one file, or pieces), and
    what its bytes came from."""

    __slots__ = ("_readers", "exporters", "pieces", "segments", "sizes")

    def __init__(self, segments: list[Segment], pieces: bool, sizes: list[int],
                 exporters: list[Any]) -> None:
        self.segments = segments
        #: sent as :class:`Pieces` (else as the one segment)
        self.pieces = pieces
        self.sizes = sizes
        #: weak references to the objects whose buffers it holds
        self.exporters = exporters
        #: read-only mappings of its files, made at the first comparison, kept
        self._readers: list[mmap.mmap] = []

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)

    def holds(self, sizes: list[int], exporters: list[Any]) -> bool:
        """Did it come from these very objects, with buffers of these sizes?"""
        return sizes == self.sizes and all(
            ref() is exporter for ref, exporter in zip(self.exporters, exporters, strict=True))

    def same_bytes(self, buffers: list[memoryview]) -> bool:
        """Do ``buffers`` hold the bytes it holds? (reads both: 13 ms per 256 MB
        measured, 35 ms the first time, which maps the segment)."""
        if not self._readers:
            self._readers = [mmap.mmap(segment.fd, segment.size, flags=mmap.MAP_SHARED,
                                       prot=mmap.PROT_READ) for segment in self.segments]
        offsets, _ = buffer_offsets(self.sizes)
        for raw, offset in zip(buffers, offsets, strict=True):
            low = 0  # where the current file starts in the whole
            for reader in self._readers:
                high = low + len(reader)
                start, end = max(low, offset), min(high, offset + raw.nbytes)
                if start < end and not _same(reader, start - low,
                                             raw[start - offset : end - offset]):
                    return False
                low = high
        return True

    def duplicate(self) -> Segment | Pieces:
        """Its files again, as the caller's own descriptors (to send and close)."""
        copies = Pieces([])
        try:
            for segment in self.segments:
                copies.segments.append(Segment(os.dup(segment.fd), segment.size))
        except OSError:
            copies.close()
            raise
        return copies if self.pieces else copies.segments[0]

    def close(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        for segment in self.segments:
            segment.close()


def _seal(fd: int) -> None:
    """Make the memfd ``fd``'s bytes final: no write, no resize, no other seal."""
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)


def _same(mapping: mmap.mmap, offset: int, raw: memoryview) -> bool:
    """Are ``raw``'s bytes those of ``mapping`` from ``offset`` on? (``memcmp``,
    without the GIL; read-only buffers too, which ctypes cannot address)."""
    import ctypes

    api = _buffer_api()
    ours, theirs = _PyBuffer(), _PyBuffer()
    api.get(mapping, ctypes.byref(ours), 0)
    try:
        api.get(raw, ctypes.byref(theirs), 0)
        try:
            if ours.len < offset + theirs.len:
                return False
            return bool(api.memcmp(ours.buf + offset, theirs.buf, theirs.len) == 0)
        finally:
            api.release(ctypes.byref(theirs))
    finally:
        api.release(ctypes.byref(ours))


_PyBuffer: Any = None
_buffer_api_handle: Any = None


def _buffer_api() -> Any:
    """``PyObject_GetBuffer``, ``PyBuffer_Release`` and libc's ``memcmp``, through ctypes."""
    global _PyBuffer, _buffer_api_handle
    if _buffer_api_handle is None:
        import ctypes
        import types

        class PyBuffer(ctypes.Structure):
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                        ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                        ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        get.restype = ctypes.c_int
        release = ctypes.pythonapi.PyBuffer_Release
        release.argtypes = [ctypes.POINTER(PyBuffer)]
        release.restype = None
        memcmp = ctypes.CDLL(None).memcmp  # (a CDLL function: called without the GIL)
        memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        memcmp.restype = ctypes.c_int
        _PyBuffer = PyBuffer
        _buffer_api_handle = types.SimpleNamespace(get=get, release=release, memcmp=memcmp)
    return _buffer_api_handle
