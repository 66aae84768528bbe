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

``bytes`` and ``bytearray`` objects pickle writes in-band itself, whatever the
buffer callback: a pickle found holding one of :data:`LIFT_FROM` bytes or
more is made again by a pickler that lifts them out of band (persistent ids,
:class:`_Lifting`); the receiver copies them out of the mapping
(:class:`_Unlifting`). A ``memoryview`` pickles as a ``PickleBuffer`` of
itself (``_serialize``), so it goes like any other buffer and arrives as a
view of the mapping.

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

from ._serialize import PROTOCOL, by_value_pickler, needs_cloudpickle

TYPE_CHECKING = False  # not typing's: workers do not import typing
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "ALIGNMENT",
    "AVAILABLE",
    "LIFT_FROM",
    "THRESHOLD",
    "Pickled",
    "Pieces",
    "Recycler",
    "Segment",
    "buffer_offsets",
    "dumps",
    "loads",
    "measure",
    "oldest_over",
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

#: a function payload of at least this many bytes is written as
#: :data:`PIECES` files, from as many threads, instead of one: the kernel
#: allocates one file's pages one at a time, however many threads write it
#: (256 MB into one fresh memfd: 90-96 ms from 1 thread, 82-99 ms from 2),
#: while two files written by two threads take 49-55 ms (measured)
PIECES_FROM: Final = 32 << 20
PIECES: Final = 2

#: the first byte of a blob whose buffers are in a segment (a plain pickle
#: of protocol 2 and over starts with the PROTO opcode, 0x80)
_SHARED_TAG = b"S"
#: ... in a segment of several files (:class:`Pieces`), whose descriptors
#: came in a bundle: a socket holding them, the one descriptor of the frame
_PIECES_TAG = b"P"
#: ... the same, for a pickle that names lifted ``bytes``/``bytearray``
#: buffers by persistent ids (loaded by :class:`_Unlifting`)
_LIFTED_TAGS = {_SHARED_TAG: b"s", _PIECES_TAG: b"p"}
# (tuples: a blob may be a bytearray, which no set can look up)
_TAGS = (_SHARED_TAG, _PIECES_TAG, *_LIFTED_TAGS.values())
_LIFTED = tuple(_LIFTED_TAGS.values())
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

    __slots__ = ("_writer", "fd", "filled", "key", "size")

    def __init__(self, fd: int, size: int, key: int = 0) -> None:
        self.fd = fd
        #: the file's size in bytes (a recycled one may hold less)
        self.size = size
        #: names it to its receiver, which reports it released (0: never)
        self.key = key
        #: bytes from the start that were written before: their pages exist
        self.filled = 0
        #: the sender's shared mapping of them, kept while the segment is
        self._writer: mmap.mmap | None = None

    def writer(self) -> mmap.mmap | None:
        """A shared mapping of the bytes written before (None if there are none,
        or no mapping could be made), kept for the next writes.

        Writing into a segment again through a mapping whose pages are all
        mapped is a plain memory copy, about 4 times faster than ``pwrite``
        (measured: 16 MB in 0.7 ms, against 3.3 ms); into fresh pages
        ``pwrite`` is faster (no page fault per page), hence only the bytes
        written before.
        """
        if self.filled and (self._writer is None or len(self._writer) < self.filled):
            self._unmap()
            try:
                self._writer = _map_shared(self.fd, self.filled)
            except OSError:  # (out of mappings, say): pwrite does it, slower
                return None
        return self._writer

    def _unmap(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def close(self) -> None:
        self._unmap()
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


def _map_shared(fd: int, size: int) -> mmap.mmap:
    """A shared mapping of ``size`` bytes of ``fd``, every page mapped at once
    (one pass of the kernel, not a fault per page)."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, flags=flags, trackfd=False)
    return mmap.mmap(fd, size, flags=flags)  # (holds a duplicate of fd until closed)


class Pieces:
    """The sender's descriptors of a message's buffers written as several
    memfds (:data:`PIECES_FROM`): the receiver maps them side by side, as one
    range. Closed by :meth:`close`, or when dropped."""

    __slots__ = ("segments",)

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)

    def bundle(self) -> int:
        """A descriptor to send beside the frame, to close once sent: one end of
        a socket pair that holds the pieces' descriptors.

        A frame carries one segment's descriptor to a worker, which hands it
        to :func:`loads`; the bundle makes the pieces that one descriptor.
        The kernel keeps the pieces while the bundle is in flight or unread,
        and frees them with it.
        """
        import socket

        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(ours, [b"\0"], [segment.fd for segment in self.segments])
        except BaseException:
            theirs.close()
            raise
        finally:
            ours.close()
        return theirs.detach()

    def close(self) -> None:
        for segment in self.segments:
            segment.close()

    def __repr__(self) -> str:
        return f"Pieces({self.segments!r})"


def _new_segment(size: int, key: int = 0, sealable: bool = False) -> Segment:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
    segment = Segment(os.memfd_create("parallax", flags), size, key)
    os.ftruncate(segment.fd, size)  # (the segment closes its fd should this fail)
    return segment


def oldest_over(kept: list[Any], keep: int, keep_bytes: int) -> list[Any]:
    """Take the oldest of ``kept`` (the first ones; each has a ``size``) out
    until at most ``keep`` of them remain, of ``keep_bytes`` bytes in all;
    return them, for the caller to close (outside its lock)."""
    dropped = []
    while len(kept) > keep or sum(item.size for item in kept) > keep_bytes:
        dropped.append(kept.pop(0))
    return dropped


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
                dropped = oldest_over(self._free, self._keep, self._keep_bytes)
            else:
                dropped = [segment]
        for old in dropped:
            old.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for segment in free:
            segment.close()


def _pickle(obj: Any, by_value: bool, callback: Any, lift_from: int = 0) -> bytes:
    """``obj`` pickled with ``callback`` as its buffer callback: by value
    (cloudpickle) or plain first, cloudpickle if the plain pickler refuses.
    ``lift_from``: ``bytes`` and ``bytearray`` objects of that size or more go
    out of band too (:class:`_Lifting`; 0: they stay in-band)."""
    if not by_value:
        try:
            if not lift_from:
                return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
            return _dump(_lifting(pickle.Pickler), obj, callback, lift_from)
        except Exception:  # (a lambda, a class of the caller's __main__ ...): by value
            if callback is not None:
                callback.reset()  # what it kept of the refused attempt
    pickler = by_value_pickler()
    return _dump(_lifting(pickler) if lift_from else pickler, obj, callback, lift_from)


def _dump(pickler: type, obj: Any, callback: Any, lift_from: int) -> bytes:
    with io.BytesIO() as file:
        instance = pickler(file, protocol=PROTOCOL, buffer_callback=callback)
        if lift_from:
            instance.lift_from = lift_from
            instance.lifted = {}
        instance.dump(obj)
        return file.getvalue()


def _pickle_shared(obj: Any, by_value: bool, collector: _Collector) -> tuple[bytes, bool]:
    """``obj`` pickled, its large buffers kept by ``collector``; and whether its
    large ``bytes``/``bytearray`` objects went out of band too (then it needs
    :class:`_Unlifting` to load).

    pickle writes ``bytes`` and ``bytearray`` in-band itself, whatever the
    buffer callback, and calls no hook for them but ``persistent_id``, which
    is called for every object: paying that on every message would slow down
    the small ones. So only a pickle that came out holding one of
    :data:`LIFT_FROM` bytes or more (:func:`_holds_large_bytes`, which reads
    its frame headers only) is made again, by a pickler that lifts them.
    """
    data = _pickle(obj, by_value, collector)
    if len(data) < LIFT_FROM or not _holds_large_bytes(data, max(collector.threshold, LIFT_FROM)):
        return data, False
    collector.reset()
    return _pickle(obj, by_value, collector, max(collector.threshold, LIFT_FROM)), True


#: ``bytes`` and ``bytearray`` objects of at least this many bytes (and of
#: :data:`THRESHOLD`) go through shared memory: pickle's frame size, from
#: which pickle writes them between its frames, where they can be found
#: without reading the whole pickle (:func:`_holds_large_bytes`)
LIFT_FROM: Final = 64 << 10

_FRAME = 0x95
_FRAME_SIZE = struct.Struct("<Q")
#: what pickle (protocol 4 and later) writes between its frames: the frame
#: headers; objects of :data:`LIFT_FROM` bytes or more (opcode: the width of
#: their length), bytes and bytearrays ...
_LARGE_BYTES = {ord("B"): 4, 0x8E: 8, 0x96: 8}
#: ... and strings
_LARGE_STR = {ord("X"): 4, 0x8D: 8}
#: ... and runs of under 4 bytes (pickle does not frame them): of opcodes
#: with no argument or a fixed one (opcode: its argument's width) ...
_SHORT = {**dict.fromkeys(b"(.012NRabdel}ost)u]\x81\x85\x86\x87\x88\x89\x8f\x90\x91"
                          b"\x92\x93\x94Q\x97\x98", 0),
          **dict.fromkeys(b"Khq\x80\x82", 1), **dict.fromkeys(b"M\x83", 2)}
#: ... or an argument of a length given in one byte
_SHORT_COUNTED = frozenset(b"CU\x8c\x8a")


def _holds_large_bytes(data: bytes, lift_from: int) -> bool:
    """Does the pickle ``data`` hold a ``bytes`` or ``bytearray`` of
    ``lift_from`` bytes or more (at least :data:`LIFT_FROM`)?

    Reads what pickle writes between its frames (frames of about 64 KiB
    each: a few steps per megabyte), not the frames. A stream it does not
    know how to walk (not framed as pickle frames from protocol 4 on) holds
    none, as far as it can tell: its objects then stay in-band.
    """
    at = 2 if data[:1] == b"\x80" else 0  # (PROTO)
    end = len(data)
    while at < end:
        op = data[at]
        if op == _FRAME:
            at += 1 + _FRAME_SIZE.size + _FRAME_SIZE.unpack_from(data, at + 1)[0]
        elif op in _LARGE_BYTES or op in _LARGE_STR:
            width = _LARGE_BYTES.get(op) or _LARGE_STR[op]
            size = int.from_bytes(data[at + 1 : at + 1 + width], "little")
            if size >= lift_from and op in _LARGE_BYTES:
                return True
            at += 1 + width + size
        elif op in _SHORT:
            at += 1 + _SHORT[op]
        elif op in _SHORT_COUNTED and at + 1 < end:
            at += 2 + data[at + 1]
        else:
            return False
    return False


#: the kinds of object :class:`_Lifting` takes out of band, as its persistent ids name them
_BYTES = "b"
_BYTEARRAY = "a"
_lifting_picklers: dict[type, type] = {}


def _lifting(base: type) -> type:
    """``base`` (a pickler class), lifting large ``bytes`` and ``bytearray``
    objects out of band (:class:`_Lifting`)."""
    pickler = _lifting_picklers.get(base)
    if pickler is None:
        pickler = _lifting_picklers[base] = type(f"Lifting{base.__name__}", (_Lifting, base), {})
    return pickler


class _Lifting:
    """A pickler mix-in: each exact ``bytes`` or ``bytearray`` of
    ``lift_from`` bytes or more is pickled as a persistent id holding a
    ``PickleBuffer`` of it, which the buffer callback takes out of band like
    any other; :class:`_Unlifting` rebuilds it. An object met twice is one
    buffer, and one object again on the other side."""

    lift_from: int
    #: the persistent ids given, by the id of their object
    lifted: dict[int, tuple[str, pickle.PickleBuffer]]

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if (kind is not bytes and kind is not bytearray) or len(obj) < self.lift_from:
            return None
        pid = self.lifted.get(id(obj))  # (the pid holds the object: its id is not reused)
        if pid is None:
            pid = self.lifted[id(obj)] = (_BYTES if kind is bytes else _BYTEARRAY,
                                          pickle.PickleBuffer(obj))
        return pid


class _Unlifting(pickle.Unpickler):
    """Loads what :class:`_Lifting` pickled: a ``bytes`` or ``bytearray`` copied
    out of its buffer (neither can be made over foreign memory)."""

    def __init__(self, data: memoryview, buffers: list[memoryview]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        #: by the persistent id (a pid met twice is one object, memoized)
        self._loaded: dict[int, tuple[Any, Any]] = {}

    def persistent_load(self, pid: Any) -> Any:
        seen = self._loaded.get(id(pid))
        if seen is not None:
            return seen[1]
        kind, buffer = pid
        if kind == _BYTES:
            value: Any = bytes(buffer)
        elif kind == _BYTEARRAY:
            value = bytearray(buffer)
        else:
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        self._loaded[id(pid)] = (pid, value)  # (the pid kept: its id is not reused)
        return value


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


def buffer_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Where each buffer starts in its segment, and the segment's size."""
    offsets = []
    end = 0
    for size in sizes:
        start = -(-end // ALIGNMENT) * ALIGNMENT
        offsets.append(start)
        end = start + size
    return offsets, end


def _write(buffers: list[memoryview], recycler: Recycler | None,
           sealable: bool = False) -> Segment:
    """A segment holding ``buffers`` at their offsets: a recycled one, or a new
    memfd (``sealable``: one that :func:`_seal` can seal)."""
    offsets, total = buffer_offsets([raw.nbytes for raw in buffers])
    segment = (_new_segment(total, sealable=sealable) if recycler is None
               else recycler.take(total))
    writer = segment.writer()
    mapped = 0 if writer is None else len(writer)
    for raw, offset in zip(buffers, offsets, strict=True):
        # Through the mapping up to where it ends, the rest (fresh pages) by pwrite.
        done = max(0, min(raw.nbytes, mapped - offset))
        if done:
            assert writer is not None
            writer[offset : offset + done] = raw[:done]
        while done < raw.nbytes:
            done += os.pwrite(segment.fd, raw[done:], offset + done)
    segment.filled = max(segment.filled, total)
    return segment


def _write_pieces(buffers: list[memoryview], pieces: int, sealable: bool = False) -> Pieces:
    """Like :func:`_write`, as ``pieces`` new memfds cut at page boundaries,
    each written by a thread of its own (the first by this one)."""
    import threading

    offsets, total = buffer_offsets([raw.nbytes for raw in buffers])
    cuts = [total * index // pieces // mmap.PAGESIZE * mmap.PAGESIZE for index in range(pieces)]
    bounds = list(zip(cuts, [*cuts[1:], total], strict=True))
    segments = Pieces([])
    errors: list[BaseException] = []
    # Views of one buffer share an export count, which a free-threaded 3.13
    # does not update atomically (CPython gh-155606): two threads slicing
    # them at once can lose a count and release the buffer under every view
    # ("operation forbidden on released memoryview object"). The slices are
    # made and let go under this lock; the writes run in parallel.
    slicing = threading.Lock()

    def fill(segment: Segment, low: int, high: int) -> None:
        try:
            for raw, offset in zip(buffers, offsets, strict=True):
                start, end = max(low, offset), min(high, offset + raw.nbytes)
                done = start
                while done < end:
                    with slicing:
                        part = raw[done - offset : end - offset]
                    try:
                        done += os.pwrite(segment.fd, part, done - low)
                    finally:
                        with slicing:
                            part.release()
        except BaseException as exc:
            errors.append(exc)

    try:
        for low, high in bounds:
            segments.segments.append(_new_segment(high - low, sealable=sealable))
        threads = [threading.Thread(target=fill, args=(segment, low, high),
                                    name="parallax-shm-write")
                   for segment, (low, high) in zip(segments.segments[1:], bounds[1:], strict=True)]
        for thread in threads:
            thread.start()
        fill(segments.segments[0], *bounds[0])
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    except BaseException:
        segments.close()
        raise
    for segment, (low, high) in zip(segments.segments, bounds, strict=True):
        segment.filled = high - low
    return segments


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

    __slots__ = ("_buffers", "_by_value", "_data", "_lifted", "_obj")

    def __init__(self, obj: Any, by_value: bool, data: bytes, buffers: list[memoryview],
                 lifted: bool = False) -> None:
        self._obj = obj
        self._by_value = by_value
        self._data = data
        self._buffers = buffers
        #: ``data`` names lifted bytes by persistent ids (:class:`_Lifting`)
        self._lifted = lifted

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
        return self._blob(segment.key, sizes), segment

    @property
    def buffers(self) -> list[memoryview]:
        """Views of the large buffers not written yet (the object's own memory)."""
        return self._buffers

    @property
    def needs_cloudpickle(self) -> bool:
        """Whether its receiver imports cloudpickle to load it (something in
        it went by value: :func:`_serialize.needs_cloudpickle`)."""
        return needs_cloudpickle(self._data)

    def write_sealable(self) -> tuple[bytes, Segment | Pieces | None]:
        """:meth:`write`, into new memfds that can be sealed (what a pool's
        ``_keeper.Keeper`` keeps); from :data:`PIECES_FROM` bytes on as
        :data:`PIECES` files, each written by a thread of its own (:class:`Pieces`).
        """
        buffers = self._buffers
        if not buffers:
            return self.write()
        pieces = PIECES if buffer_offsets([raw.nbytes for raw in buffers])[1] >= PIECES_FROM else 1
        written: Segment | Pieces
        try:
            written = (_write_pieces(buffers, pieces, sealable=True) if pieces > 1
                       else _write(buffers, None, sealable=True))
        except OSError:
            return self.write()  # (in-band, as :meth:`write` sends it then)
        return self.framed(pieces if pieces > 1 else 0), written

    def framed(self, pieces: int = 0) -> bytes:
        """The frame of buffers already in shared memory (written by
        :meth:`write_sealable`, or kept from an earlier message with the same
        bytes), in ``pieces`` files (0: one); lets the buffers go."""
        blob = self._blob(0, [raw.nbytes for raw in self._buffers], pieces)
        self.release()
        return blob

    def _blob(self, key: int, sizes: list[int], pieces: int = 0) -> bytes:
        """The frame: the header naming the segment's buffers (and its pieces:
        0, one file), then the pickle."""
        tag = [_PIECES_TAG, _COUNT.pack(pieces)] if pieces else [_SHARED_TAG]
        if self._lifted:
            tag[0] = _LIFTED_TAGS[tag[0]]
        header = b"".join([*tag, _KEY.pack(key), _COUNT.pack(len(sizes)),
                           *map(_SIZE.pack, sizes)])
        return header + self._data

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
        data, lifted = _pickle_shared(obj, by_value, collector)
    except BaseException:
        collector.reset()
        raise
    buffers, collector.buffers = collector.buffers, []
    return Pickled(obj if buffers else None, by_value, data, buffers, lifted)


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
        tag = blob[:1]
        if tag not in _TAGS:
            return pickle.loads(blob)
        if fd < 0:
            raise ValueError("a message with out-of-band buffers came without its segment")
        view = memoryview(blob)
        at = 1
        pieces = 0
        lifted = tag in _LIFTED
        if tag in (_PIECES_TAG, _LIFTED_TAGS[_PIECES_TAG]):
            (pieces,) = _COUNT.unpack_from(view, at)
            at += _COUNT.size
        (key,) = _KEY.unpack_from(view, at)
        (count,) = _COUNT.unpack_from(view, at + _KEY.size)
        start = at + _KEY.size + _COUNT.size
        sizes = [_SIZE.unpack_from(view, start + _SIZE.size * index)[0]
                 for index in range(count)]
        data = view[start + _SIZE.size * count :]
        offsets, total = buffer_offsets(sizes)
        mapping: Any = None
        if pieces:
            mapping, whole = _load_pieces(fd, pieces, total)
        else:
            try:
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
    if lifted:
        return _Unlifting(data, buffers).load()
    return pickle.loads(data, buffers=buffers)


def _load_pieces(bundle: int, pieces: int, total: int) -> tuple[Any, memoryview]:
    """The pieces that came in ``bundle`` (:meth:`Pieces.bundle`, which stays
    the caller's to close), mapped side by side; or a copy, read from them."""
    fds = _unbundle(bundle, pieces)
    try:
        try:
            return _map_pieces(fds, total)
        except OSError:  # (as in loads: no mapping to be had)
            copy = bytearray(total)
            at = 0
            for fd in fds:
                part = _read(fd, min(os.fstat(fd).st_size, total - at))
                copy[at : at + len(part)] = part
                at += len(part)
            return None, memoryview(copy)
    finally:
        for fd in fds:
            os.close(fd)


def _unbundle(bundle: int, pieces: int) -> list[int]:
    """The ``pieces`` descriptors a bundle socket holds (now the caller's)."""
    import socket

    sock = socket.socket(fileno=bundle)
    try:
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        _, fds, msg_flags, _ = socket.recv_fds(sock, 1, pieces, flags)
    finally:
        sock.detach()  # (the descriptor stays the caller's)
    if len(fds) != pieces or msg_flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            os.close(fd)
        raise OSError(f"expected {pieces} pieces of shared memory, got {len(fds)}")
    return list(fds)


def _map_pieces(fds: list[int], total: int) -> tuple[Any, memoryview]:
    """:func:`_map_private` of several files side by side, as one range: an
    address range reserved, then each file mapped at its place in it."""
    import ctypes
    import weakref

    libc = _libc()
    sizes = [os.fstat(fd).st_size for fd in fds]
    length = sum(sizes)
    if length < total or any(size % mmap.PAGESIZE for size in sizes[:-1]):
        raise ValueError(f"pieces of {sizes} bytes cannot hold {total} bytes side by side")
    base = libc.mmap(None, length, _PROT_NONE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if base is None or base == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"reserving addresses for shared memory failed: {os.strerror(error)}")
    at = 0
    for fd, size in zip(fds, sizes, strict=True):
        address = libc.mmap(base + at, size, mmap.PROT_READ | mmap.PROT_WRITE,
                            mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
        if address is None or address == _MAP_FAILED:
            error = ctypes.get_errno()
            libc.munmap(base, length)
            raise OSError(error, f"mapping shared memory failed: {os.strerror(error)}")
        at += size
    region = (ctypes.c_char * length).from_address(base)
    unmap = weakref.finalize(region, libc.munmap, base, length)
    unmap.atexit = False  # at exit, objects still using it may outlive the hook
    return region, memoryview(region).cast("B")[:total]


#: (Linux's values; the mmap module does not name them)
_PROT_NONE = 0
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000


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
        data, _ = _pickle_shared(obj, by_value, collector)
        shared = sum(raw.nbytes for raw in collector.buffers)
    finally:
        collector.reset()
    return len(data), shared
