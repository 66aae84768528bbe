"""Large buffers through shared memory: pickle protocol 5, out-of-band, in a memfd.

What a process worker and its pool send each other (a chunk's items, its
values, a job's function) is pickled with protocol 5 and a
``buffer_callback``: every buffer the pickler hands out of band (numpy arrays
and what is built on them, such as pandas frames; Arrow arrays;
``pickle.PickleBuffer`` itself) of at least :data:`THRESHOLD` bytes is copied
into one anonymous memory file (``os.memfd_create``) instead of the pickle
stream. The file travels as a descriptor beside its frame (``SCM_RIGHTS``, in
``_wire``); the receiver maps it copy-on-write (a private mapping,
:func:`_map_private`) and unpickles the buffers straight from the mapping: no
copy on that side, and an array whose function writes into it changes its own
private pages only.

Lifetime: a memfd has no name anywhere (nothing in ``/dev/shm``); the kernel
frees it once the last descriptor and the last mapping are gone, whichever
side dies, however. The sender closes its descriptor when the message is no
longer needed (:class:`Segment`); the receiver closes its own right after
mapping, and the mapping goes with the last object using it (an array keeps
it alive through its ``base``).

Recycling (a chunk's items, caller -> worker): a fresh memfd costs its pages
(allocated and zeroed by the kernel: most of the price of sending an array),
so the pool writes the next chunks into segments its workers let go of.
Such a segment carries a key; the worker watches its mapping and reports
the key once the mapping is gone (:func:`take_released`: no object of the
worker can see the memory any more), and only then may the caller
(:class:`Recycler`) write into it again.

Where there is no ``memfd_create`` (macOS, Windows) every buffer stays in the
pickle stream, as before: a documented platform difference
(docs/large-data.md).

Worker-light: a process worker imports this module.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import sys

from ._serialize import PROTOCOL, by_value_pickler

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "ALIGNMENT",
    "AVAILABLE",
    "THRESHOLD",
    "Pickled",
    "Recycler",
    "Segment",
    "dumps",
    "loads",
    "measure",
    "pickle_shared",
    "take_released",
]

#: out-of-band buffers of at least this many bytes go through shared memory;
#: smaller ones stay in the pickle stream. Measured with 2 workers (warm pool,
#: one buffer per item): the socket and shared memory cost the same at about
#: 16-32 KiB; at 64 KiB shared memory is 2.6x faster for arguments (recycled
#: segments) and 1.8x for results (fresh ones); see docs/large-data.md
THRESHOLD: Final = 64 << 10
#: each buffer starts at a multiple of this in its segment (SIMD-friendly
#: for the arrays mapped on it; the mapping itself is page-aligned)
ALIGNMENT: Final = 64
#: this platform has anonymous memory files (Linux); elsewhere all in-band
AVAILABLE: Final = sys.platform.startswith("linux") and hasattr(os, "memfd_create")

#: the first byte of a blob whose buffers are in a segment (a plain pickle
#: of protocol 2 and over starts with the PROTO opcode, 0x80)
_SHARED_TAG = b"S"
_KEY = struct.Struct("!Q")
_COUNT = struct.Struct("!I")
_SIZE = struct.Struct("!Q")
# mmap's ``trackfd=False`` (3.13+): the mapping holds no descriptor. Before
# it, ``mmap.mmap`` keeps a duplicate open for as long as the mapping lives:
# a caller keeping a thousand result arrays would hold a thousand
# descriptors (and run out of them), so there the mapping is made with
# ctypes instead (:func:`_map_private`).


#: the keys of recyclable segments (0: not recyclable)
_keys = iter(range(1, 1 << 63))


class Segment:
    """The sender's descriptor of a memfd holding a message's buffers.

    Closed by :meth:`close`, or when dropped: a message queued and then
    abandoned (its run cancelled, its pool broken) frees its memory with it.
    """

    __slots__ = ("fd", "key", "size")

    def __init__(self, fd: int, size: int, key: int = 0) -> None:
        self.fd = fd
        #: the file's size in bytes (a recycled one may hold less)
        self.size = size
        #: names it to its receiver, which reports it released (0: never)
        self.key = key

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:  # noqa: SIM105 (no contextlib: at interpreter exit, modules may be gone)
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Segment(fd={self.fd}, size={self.size}, key={self.key})"


def _new_segment(size: int, key: int = 0) -> Segment:
    segment = Segment(os.memfd_create("parallax", os.MFD_CLOEXEC), size, key)
    os.ftruncate(segment.fd, size)  # (the segment closes its fd should this fail)
    return segment


class Recycler:
    """The sender's segments that their receivers let go of, to write again.

    A segment written once has its pages: writing into it again costs a
    copy, a fresh one the kernel's page allocation besides (several times
    the copy). Keeps at most ``keep`` segments and ``keep_bytes`` bytes;
    thread-safe.
    """

    __slots__ = ("_free", "_keep", "_keep_bytes", "_lock")

    def __init__(self, keep: int, keep_bytes: int) -> None:
        import threading  # (the caller's side only)

        self._free: list[Segment] = []
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._lock = threading.Lock()

    def take(self, size: int) -> Segment:
        """A segment of at least ``size`` bytes: a free one that fits best, else
        the largest free one grown to ``size``, else a new one.

        Grown, not replaced: a chunk somewhat larger than the last (chunk sizes
        vary within a run) keeps the pages already there and pays the
        kernel's allocation for the difference only.
        """
        with self._lock:
            fitting = [segment for segment in self._free if size <= segment.size <= 4 * size]
            if fitting:
                best = min(fitting, key=lambda segment: segment.size)
                self._free.remove(best)
                return best
            grown = max(self._free, key=lambda segment: segment.size, default=None)
            if grown is not None and grown.size < size:
                self._free.remove(grown)
            else:
                grown = None  # (every free one is more than 4 times too large)
        if grown is not None:
            try:
                os.ftruncate(grown.fd, size)
            except OSError:
                grown.close()
            else:
                grown.size = size
                return grown
        return _new_segment(size, next(_keys))

    def give(self, segment: Segment) -> None:
        """``segment``'s receiver let go of it: keep it for a next message, or close it."""
        with self._lock:
            if segment.fd >= 0 and segment.size <= self._keep_bytes:
                self._free.append(segment)
                while (len(self._free) > self._keep
                       or sum(kept.size for kept in self._free) > self._keep_bytes):
                    self._free.pop(0).close()  # the oldest
                return
        segment.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for segment in free:
            segment.close()


def _pickle(obj: Any, by_value: bool, callback: Any) -> bytes:
    """``obj`` pickled with ``callback`` as its buffer callback: by value
    (cloudpickle) or plain first, cloudpickle if the plain pickler refuses."""
    if not by_value:
        try:
            return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
        except Exception:  # (a lambda, a class of the caller's __main__ ...): by value
            if callback is not None:
                callback.reset()  # what it kept of the refused attempt
    with io.BytesIO() as file:
        by_value_pickler()(file, protocol=PROTOCOL, buffer_callback=callback).dump(obj)
        return file.getvalue()


class _Collector:
    """The buffer callback: keeps the large contiguous buffers out of band."""

    __slots__ = ("buffers", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.buffers: list[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """True: pickle ``buffer`` in-band; False: it is out of band, kept here."""
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: the pickle stream copies it
            return True
        if raw.nbytes < self.threshold:
            raw.release()
            return True
        self.buffers.append(raw)
        return False

    def reset(self) -> None:
        for raw in self.buffers:
            raw.release()
        self.buffers = []


def _offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Where each buffer starts in its segment, and the segment's size."""
    offsets = []
    end = 0
    for size in sizes:
        start = -(-end // ALIGNMENT) * ALIGNMENT
        offsets.append(start)
        end = start + size
    return offsets, end


def _write(buffers: list[memoryview], recycler: Recycler | None) -> Segment:
    """A segment holding ``buffers`` at their offsets: a recycled one, or a new memfd."""
    offsets, total = _offsets([raw.nbytes for raw in buffers])
    segment = _new_segment(total) if recycler is None else recycler.take(total)
    for raw, offset in zip(buffers, offsets, strict=True):
        done = 0
        while done < raw.nbytes:
            done += os.pwrite(segment.fd, raw[done:], offset + done)
    return segment


class Pickled:
    """An object pickled for another process, its large buffers not copied yet.

    :func:`dumps` in two steps: :func:`pickle_shared` pickles at once (and
    fails at once, for an object that does not pickle); :meth:`write` copies
    the large buffers into a segment when the message is about to go, so
    that a sender with many messages queued holds shared memory for the few
    in flight only, and writes the later ones into the segments the earlier
    ones freed. Until then it holds views of the object's buffers (the
    object's exporters cannot be resized meanwhile); a write made later
    sends the buffers' bytes as they are then.
    """

    __slots__ = ("_buffers", "_by_value", "_data", "_obj")

    def __init__(self, obj: Any, by_value: bool, data: bytes, buffers: list[memoryview]) -> None:
        self._obj = obj
        self._by_value = by_value
        self._data = data
        self._buffers = buffers

    @property
    def shared_bytes(self) -> int:
        """The bytes :meth:`write` will copy into shared memory."""
        return sum(raw.nbytes for raw in self._buffers)

    def write(self, recycler: Recycler | None = None) -> tuple[bytes, Segment | None]:
        """The blob for the frame and the segment to send beside it (None: every
        buffer stayed in-band); once only. See :func:`dumps`.

        Raises:
            Exception: no segment could be had, and pickling ``obj`` in-band
                again failed (what the pickler raised).
        """
        buffers, self._buffers = self._buffers, []
        obj, self._obj = self._obj, None
        if not buffers:
            return self._data, None
        try:
            try:
                segment = _write(buffers, recycler)
            except OSError:
                # No shared memory to be had now (out of descriptors, of memory):
                # this message travels in-band, through the socket, as off Linux.
                _release(buffers)
                return _pickle(obj, self._by_value, None), None
            sizes = [raw.nbytes for raw in buffers]
        finally:
            _release(buffers)
        header = b"".join([_SHARED_TAG, _KEY.pack(segment.key), _COUNT.pack(len(sizes)),
                           *map(_SIZE.pack, sizes)])
        return header + self._data, segment

    def release(self) -> None:
        """Let go of the object's buffers without writing them (a message dropped)."""
        buffers, self._buffers = self._buffers, []
        self._obj = None
        _release(buffers)


def _release(buffers: list[memoryview]) -> None:
    for raw in buffers:
        raw.release()


def pickle_shared(obj: Any, by_value: bool, threshold: int = THRESHOLD) -> Pickled:
    """``obj`` pickled for another process, its large buffers to be written
    into a segment later (:meth:`Pickled.write`).

    Raises:
        Exception: ``obj`` does not pickle (what the pickler raised).
    """
    if not AVAILABLE:
        return Pickled(None, by_value, _pickle(obj, by_value, None), [])
    collector = _Collector(threshold)
    try:
        data = _pickle(obj, by_value, collector)
    except BaseException:
        collector.reset()
        raise
    buffers, collector.buffers = collector.buffers, []
    return Pickled(obj if buffers else None, by_value, data, buffers)


def dumps(obj: Any, by_value: bool, threshold: int = THRESHOLD,
          recycler: Recycler | None = None) -> tuple[bytes, Segment | None]:
    """``obj`` pickled for another process, its large buffers in a segment.

    ``by_value``: pickle with cloudpickle (what the caller sends); otherwise
    with the standard pickler first (what a worker sends home). Returns the
    blob for the frame and the segment to send beside it, or None when every
    buffer stayed in-band (then the blob is a plain pickle). With a
    ``recycler`` the segment comes from it and its receiver reports it
    released (:func:`take_released`), to go back to the recycler.

    Raises:
        Exception: ``obj`` does not pickle (what the pickler raised).
    """
    return pickle_shared(obj, by_value, threshold).write(recycler)


def loads(blob: bytes | bytearray, fd: int = -1) -> Any:
    """Unpickle a blob of :func:`dumps`; ``fd`` is the segment's descriptor that
    came with it (-1: none), owned from now on: always closed here.

    Raises:
        ValueError: a blob that names buffers came without a segment.
        Exception: what unpickling raised.
    """
    try:
        if blob[:1] != _SHARED_TAG:
            return pickle.loads(blob)
        if fd < 0:
            raise ValueError("a message with out-of-band buffers came without its segment")
        view = memoryview(blob)
        (key,) = _KEY.unpack_from(view, 1)
        (count,) = _COUNT.unpack_from(view, 1 + _KEY.size)
        start = 1 + _KEY.size + _COUNT.size
        sizes = [_SIZE.unpack_from(view, start + _SIZE.size * index)[0]
                 for index in range(count)]
        data = view[start + _SIZE.size * count :]
        offsets, total = _offsets(sizes)
        try:
            mapping: Any = None
            mapping, whole = _map_private(fd, total)
        except OSError:
            # No mapping to be had (the process's map count limit reached,
            # say): a copy of the segment then, read from its file.
            whole = memoryview(_read(fd, total))
    finally:
        if fd >= 0:
            os.close(fd)
    if key:
        if mapping is None:
            _released.append(key)  # copied: nothing here maps it
        else:
            _watch(mapping, key)
    buffers = [whole[offset : offset + size] for offset, size in zip(offsets, sizes, strict=True)]
    whole.release()  # (the slices keep the mapping alive, not this view)
    return pickle.loads(data, buffers=buffers)


def _map_private(fd: int, size: int) -> tuple[Any, memoryview]:
    """A copy-on-write mapping of the file ``fd`` (which stays the caller's to
    close) and a byte view of it; unmapped once nothing uses it.

    Copy-on-write: a function writing into its argument changes its own
    pages, nobody else's; the mapping lives as long as the objects built on
    it (an array's ``base`` keeps the view).
    """
    if sys.version_info >= (3, 13):  # (mypy checks the branch of its target version)
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY, trackfd=False)
        return mapping, memoryview(mapping)
    import ctypes
    import weakref

    libc = _libc()
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"mapping shared memory failed: {os.strerror(error)}")
    region = (ctypes.c_char * size).from_address(address)
    unmap = weakref.finalize(region, libc.munmap, address, size)
    unmap.atexit = False  # at exit, objects still using it may outlive the hook
    return region, memoryview(region).cast("B")


def _read(fd: int, size: int) -> bytearray:
    copy = bytearray(size)
    view = memoryview(copy)
    done = 0
    while done < size:
        count = os.preadv(fd, [view[done:]], done)
        if count == 0:
            raise EOFError(f"a shared-memory segment holds {done} bytes, not {size}")
        done += count
    return copy


_MAP_FAILED = (1 << 64) - 1  # (void *) -1
_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc_handle = libc
    return _libc_handle


#: the keys of the mappings gone since the last take_released(), and the
#: weak references watching the others
_released: list[int] = []
_watched: dict[int, Any] = {}


def _watch(mapping: Any, key: int) -> None:
    """Report ``key`` released once ``mapping`` is gone (unmapped with its last user)."""
    import weakref  # (only once a recyclable segment came: not at a worker's start)

    def gone(_: Any, key: int = key) -> None:
        _watched.pop(key, None)
        _released.append(key)

    _watched[key] = weakref.ref(mapping, gone)


def take_released() -> list[int]:
    """The keys of the recyclable segments whose mappings are gone since the last call."""
    if not _released:
        return []
    taken = _released[:]
    del _released[: len(taken)]
    return taken


def measure(obj: Any, by_value: bool = True, threshold: int = THRESHOLD) -> tuple[int, int]:
    """How many bytes ``obj`` would ship: ``(through the socket, through shared
    memory)``. Cheap: the shared buffers are counted, not copied.

    Off Linux everything goes through the socket, so the second is 0.

    Raises:
        Exception: ``obj`` does not pickle.
    """
    if not AVAILABLE:
        return len(_pickle(obj, by_value, None)), 0
    collector = _Collector(threshold)
    try:
        data = _pickle(obj, by_value, collector)
        shared = sum(raw.nbytes for raw in collector.buffers)
    finally:
        collector.reset()
    return len(data), shared
