"""Large buffers through shared memory (_shm) and descriptors over a channel (_wire).

In one process: what process mode does on each side of its sockets, without
the workers (tests/test_large_data.py runs them). numpy is optional: the
mechanism is plain pickle protocol 5, tested here with a class of our own
whose buffer pickles out of band; numpy's dtypes are tested where numpy is
installed.
"""

from __future__ import annotations

import array
import gc
import os
import pickle
import socket
import threading
from typing import Any

import pytest

from parallax import _keeper, _shm
from parallax._protocol import Result, pickle_items, share_values
from parallax._units import Chunk, ChunkResult
from parallax._wire import MAX_FDS, Channel

pytestmark = pytest.mark.skipif(not _shm.AVAILABLE, reason="no memfd_create on this platform")

THRESHOLD = _shm.THRESHOLD


class Blob:
    """Bytes that pickle out of band (protocol 5), as numpy arrays do."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blob, (pickle.PickleBuffer(self.data),)


class Opened:
    """A descriptor and the file it is open on: closed, its number may be
    reused at once by another thread of the session, for another file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.file = _identity(fd)

    def is_open(self) -> bool:
        return _identity(self.fd) == self.file


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def is_open(opened: Opened) -> bool:
    return opened.is_open()


def round_trip(obj: Any, by_value: bool = True, **options: Any) -> tuple[Any, bool]:
    """``obj`` through dumps and loads, as the other side would see it; and
    whether it travelled through a segment."""
    blob, segment = _shm.dumps(obj, by_value, **options)
    if segment is None:
        return _shm.loads(blob), False
    fd = os.dup(segment.fd)  # what SCM_RIGHTS hands the receiver
    segment.close()
    return _shm.loads(blob, fd), True


@pytest.mark.parametrize("by_value", [True, False])
@pytest.mark.parametrize(
    ("size", "shared"),
    [(0, False), (1, False), (THRESHOLD - 1, False), (THRESHOLD, True), (3 * THRESHOLD + 7, True)],
)
def test_buffers_from_the_threshold_on_travel_through_a_segment(
    size: int, shared: bool, by_value: bool
) -> None:
    data = bytearray(os.urandom(size))
    back, through_segment = round_trip(Blob(data), by_value)
    assert through_segment is shared
    assert bytes(back.data) == data


def test_several_buffers_share_one_segment_each_at_an_aligned_offset() -> None:
    parts = [bytearray(os.urandom(THRESHOLD + extra)) for extra in (1, 13, 0)]
    blob, segment = _shm.dumps([Blob(part) for part in parts], by_value=False)
    assert segment is not None
    back = _shm.loads(blob, os.dup(segment.fd))
    assert [bytes(blob.data) for blob in back] == parts
    for item in back:
        mapping = item.data.obj
        offset = _address(item.data) - _address(mapping)
        assert offset % _shm.ALIGNMENT == 0


def _address(buffer: Any) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.mark.parametrize(
    "value",
    ["x" * (2 * THRESHOLD), "text", 12, None, [1, 2.5, b"x"]],
    ids=["large-str", "str", "int", "none", "list"],
)
def test_plain_values_round_trip(value: Any) -> None:
    back, shared = round_trip(value)
    assert back == value
    assert type(back) is type(value)
    assert not shared


def test_a_read_only_buffer_arrives_read_only_and_a_writable_one_writable() -> None:
    read_only, _ = round_trip(pickle.PickleBuffer(bytes(2 * THRESHOLD)))
    writable, _ = round_trip(pickle.PickleBuffer(bytearray(2 * THRESHOLD)))
    assert isinstance(read_only, memoryview) and read_only.readonly
    assert isinstance(writable, memoryview) and not writable.readonly


def test_writes_into_a_mapped_buffer_stay_private() -> None:
    # Copy-on-write: a function writing into its argument changes its own
    # pages, not the segment another worker maps.
    blob, segment = _shm.dumps(Blob(bytearray(2 * THRESHOLD)), by_value=False)
    assert segment is not None
    first = _shm.loads(blob, os.dup(segment.fd))
    second = _shm.loads(blob, os.dup(segment.fd))
    first.data[:4] = b"\xff" * 4
    assert bytes(second.data[:4]) == b"\0" * 4
    assert bytes(first.data[:4]) == b"\xff" * 4


def test_loads_closes_the_descriptor_whatever_happens() -> None:
    blob, segment = _shm.dumps(Blob(bytearray(2 * THRESHOLD)), by_value=False)
    assert segment is not None
    fd = os.dup(segment.fd)
    opened = Opened(fd)
    _shm.loads(blob, fd)
    assert not is_open(opened)
    fd = os.dup(segment.fd)
    opened = Opened(fd)
    with pytest.raises(pickle.UnpicklingError):
        _shm.loads(blob[:-5] + b"junk!", fd)
    assert not is_open(opened)
    fd = os.dup(segment.fd)
    opened = Opened(fd)
    _shm.loads(pickle.dumps(1), fd)  # a plain pickle came with a descriptor after all
    assert not is_open(opened)
    with pytest.raises(ValueError, match="without its segment"):
        _shm.loads(blob)


def test_a_segment_closes_its_descriptor_when_dropped() -> None:
    _, segment = _shm.dumps(Blob(bytearray(THRESHOLD)), by_value=False)
    assert segment is not None
    opened = Opened(segment.fd)
    del segment
    gc.collect()
    assert not is_open(opened)


def test_the_mapping_lives_as_long_as_what_was_built_on_it() -> None:
    blob, segment = _shm.dumps(Blob(bytearray(b"ab" * THRESHOLD)), by_value=False)
    assert segment is not None
    back = _shm.loads(blob, os.dup(segment.fd))
    segment.close()  # the sender is gone: the receiver's mapping holds the memory
    del segment, blob
    gc.collect()
    assert bytes(back.data[:4]) == b"abab"


def test_a_receiver_reports_a_recyclable_segment_once_unmapped() -> None:
    recycler = _shm.Recycler(keep=4, keep_bytes=1 << 30)
    blob, segment = _shm.dumps(Blob(bytearray(2 * THRESHOLD)), False, recycler=recycler)
    assert segment is not None and segment.key
    _shm.take_released()
    back = _shm.loads(blob, os.dup(segment.fd))
    assert _shm.take_released() == []
    del back
    gc.collect()
    assert _shm.take_released() == [segment.key]
    recycler.give(segment)
    blob, again = _shm.dumps(Blob(bytearray(b"z" * THRESHOLD)), False, recycler=recycler)
    assert again is segment  # written into again: its pages are there already
    assert bytes(_shm.loads(blob, os.dup(again.fd)).data[:3]) == b"zzz"
    again.close()
    recycler.close()


def test_without_a_mapping_the_receiver_reads_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # (the process's limit of mappings reached, say)
    def refuse(fd: int, size: int) -> Any:
        raise OSError(12, "Cannot allocate memory")

    recycler = _shm.Recycler(keep=4, keep_bytes=1 << 30)
    blob, segment = _shm.dumps(Blob(bytearray(b"c" * THRESHOLD)), False, recycler=recycler)
    assert segment is not None
    _shm.take_released()
    monkeypatch.setattr(_shm, "_map_private", refuse)
    back = _shm.loads(blob, os.dup(segment.fd))
    assert bytes(back.data) == b"c" * THRESHOLD
    assert _shm.take_released() == [segment.key]  # a copy: the segment is free again
    recycler.close()


def test_oldest_over_takes_the_oldest_out_until_both_limits_hold() -> None:
    class Sized:
        def __init__(self, size: int) -> None:
            self.size = size

    kept = [Sized(size) for size in (5, 1, 2, 3)]
    first, second, third, fourth = kept
    assert _shm.oldest_over(kept, keep=3, keep_bytes=100) == [first]  # too many
    assert _shm.oldest_over(kept, keep=3, keep_bytes=5) == [second]  # too large: 6 bytes
    assert kept == [third, fourth]
    assert _shm.oldest_over(kept, keep=2, keep_bytes=5) == []


def test_a_recycler_keeps_what_its_limits_allow() -> None:
    recycler = _shm.Recycler(keep=2, keep_bytes=3 * THRESHOLD)
    segments = [recycler.take(THRESHOLD) for _ in range(4)]
    fds = [Opened(segment.fd) for segment in segments]
    for segment in segments:
        recycler.give(segment)
    assert [is_open(fd) for fd in fds] == [False, False, True, True]  # the oldest went
    big = recycler.take(4 * THRESHOLD)  # a kept one, grown
    assert Opened(big.fd).file == fds[2].file and big.size == 4 * THRESHOLD
    recycler.give(big)  # over keep_bytes alone: closed
    assert big.fd == -1
    small = recycler.take(THRESHOLD // 8)
    # (by file, not number: a closed descriptor's number is handed out again)
    assert Opened(small.fd).file != fds[3].file  # the kept one is too large
    small.close()
    recycler.close()
    assert not any(is_open(fd) for fd in fds)


def test_a_recycled_segment_grows_rather_than_being_replaced() -> None:
    recycler = _shm.Recycler(keep=4, keep_bytes=1 << 30)
    blob, segment = _shm.dumps(Blob(bytearray(b"a" * THRESHOLD)), False, recycler=recycler)
    assert segment is not None
    first = Opened(segment.fd)
    recycler.give(segment)
    larger = Blob(bytearray(b"b" * (3 * THRESHOLD)) + b"c" * THRESHOLD)
    blob, again = _shm.dumps(larger, False, recycler=recycler)
    assert again is segment and first.is_open()  # the same file, its pages kept
    assert again.size == again.filled == 4 * THRESHOLD
    back = _shm.loads(blob, os.dup(again.fd))
    assert bytes(back.data) == bytes(larger.data)  # the old bytes, the grown ones: all new
    recycler.give(again)
    blob, third = _shm.dumps(Blob(bytearray(b"d" * (2 * THRESHOLD))), False, recycler=recycler)
    assert third is segment  # written through the sender's mapping now
    assert bytes(_shm.loads(blob, os.dup(third.fd)).data) == b"d" * (2 * THRESHOLD)
    del back
    recycler.give(third)
    recycler.close()
    assert not first.is_open()


def test_pickled_fails_at_once_and_copies_only_when_written() -> None:
    with pytest.raises(TypeError):
        _shm.pickle_shared([threading.Lock()], True)
    data = bytearray(b"e" * THRESHOLD)
    pickled = _shm.pickle_shared(Blob(data), True)
    assert pickled.shared_bytes == THRESHOLD
    data[0:1] = b"f"  # (in place: what is written is what the buffer holds then)
    blob, segment = pickled.write()
    assert segment is not None
    back = _shm.loads(blob, os.dup(segment.fd))
    assert bytes(back.data[:2]) == b"fe"
    assert pickled.shared_bytes == 0  # the views of the object are let go
    data.extend(b"g")  # no export left: the bytearray may be resized again
    segment.close()


class Exported:
    """Bytes that pickle out of band and can be referred to weakly (numpy arrays
    can; a bytearray cannot), as the objects a function payload binds."""

    def __init__(self, size: int, fill: int = 1) -> None:
        self.data = array.array("B", bytes([fill]) * size)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blob, (pickle.PickleBuffer(self.data),)


def kept_write(keeper: _keeper.Keeper, obj: Any) -> tuple[Any, tuple[int, int]]:
    """``obj`` through the keeper and back; and the segment's file."""
    blob, segment = keeper.write(_shm.pickle_shared(obj, True))
    assert segment is not None
    back = _shm.loads(blob, os.dup(segment.fd))
    file = _identity(segment.fd)
    assert file is not None
    segment.close()
    return back, file


def test_a_keeper_sends_the_kept_segment_while_the_bytes_are_the_same() -> None:
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    bound = Exported(2 * THRESHOLD)
    first, file = kept_write(keeper, bound)
    again, same_file = kept_write(keeper, bound)
    assert same_file == file and bytes(again.data) == bytes(bound.data)
    bound.data[THRESHOLD] = 9  # changed in place: the next run must see it
    changed, new_file = kept_write(keeper, bound)
    assert new_file != file
    assert changed.data[THRESHOLD] == 9 and first.data[THRESHOLD] == 1
    assert len(keeper) == 1  # the stale copy went
    other = Exported(2 * THRESHOLD)  # the same bytes, another object: not compared
    assert kept_write(keeper, other)[1] not in (file, new_file)
    keeper.close()
    assert len(keeper) == 0


def test_a_kept_segment_is_sealed_and_goes_with_its_object() -> None:
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    bound = Exported(THRESHOLD)
    blob, segment = keeper.write(_shm.pickle_shared(bound, True))
    assert segment is not None
    with pytest.raises(PermissionError):  # sealed: its bytes are final
        os.pwrite(segment.fd, b"x", 0)
    back = _shm.loads(blob, os.dup(segment.fd))
    back.data[0] = 7  # a receiver's copy-on-write mapping still works
    kept = keeper._entries[0].segments[0]
    watched = Opened(kept.fd)
    segment.close()
    del bound
    gc.collect()
    assert len(keeper) == 0 and not watched.is_open()
    keeper.close()


def test_a_keeper_keeps_what_its_limits_allow() -> None:
    keeper = _keeper.Keeper(keep=2, keep_bytes=1 << 30)
    objects = [Exported(THRESHOLD, fill) for fill in range(3)]
    files = [kept_write(keeper, obj)[1] for obj in objects]
    assert len(keeper) == 2  # the oldest went
    assert kept_write(keeper, objects[0])[1] != files[0]
    assert kept_write(keeper, objects[2])[1] == files[2]  # used: now the newest
    kept_write(keeper, objects[1])  # written again: objects[0]'s copy goes, not [2]'s
    assert kept_write(keeper, objects[2])[1] == files[2]
    small = _keeper.Keeper(keep=4, keep_bytes=THRESHOLD // 2)
    kept_write(small, objects[0])
    assert len(small) == 0  # larger than it may keep at all
    unkept = Blob(bytearray(THRESHOLD))  # a bytearray cannot be watched: not kept
    kept_write(keeper, unkept)
    assert len(keeper) == 2
    keeper.close()


def test_measure_counts_without_copying() -> None:
    items = [Blob(bytearray(2 * THRESHOLD)), Blob(bytearray(10)), "x" * 1000]
    inband, shared = _shm.measure(items)
    blob, segment = _shm.dumps(items, by_value=True)
    assert shared == 2 * THRESHOLD
    assert segment is not None
    assert abs(inband - len(blob)) < 64  # the blob adds the segment's layout
    assert _shm.measure([1, 2, 3]) == (len(_shm.dumps([1, 2, 3], True)[0]), 0)


def test_a_plain_pickle_refusal_falls_back_to_cloudpickle_without_doubling_buffers() -> None:
    # The standard pickler refuses the lambda after handing out the first buffer.
    value = [Blob(bytearray(b"q" * THRESHOLD)), lambda: 3]
    back, shared = round_trip(value, by_value=False)
    assert shared
    assert bytes(back[0].data[:2]) == b"qq" and back[1]() == 3


def test_values_that_do_not_pickle_fail_alone_beside_shared_ones() -> None:
    chunk = Chunk.fresh(0, 0, [0, 1])
    lock = threading.Lock()
    result = ChunkResult(chunk, [Blob(bytearray(b"v" * THRESHOLD)), lock])
    _, failures, segment = share_values(result.values, result.failures)
    assert segment is not None
    assert list(failures) == [1]
    message, segment = Result.shared(result, [7])
    assert message.released == [7]
    assert segment is not None
    home = message.to_chunk_result(chunk, "w", fd=os.dup(segment.fd))
    assert bytes(home.values[0].data[:1]) == b"v"
    assert home.values[1] is None


def test_pickle_items_names_what_does_not_pickle() -> None:
    with pytest.raises(TypeError):
        pickle_items([threading.Lock()])


# -- descriptors over a channel ------------------------------------------------------------


@pytest.fixture
def channels() -> Any:
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(ours.detach()), Channel(theirs.detach())
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.mark.parametrize("size", [0, 5, 1 << 16, 1 << 20])
@pytest.mark.parametrize("count", [1, 2, MAX_FDS])
def test_a_frame_carries_descriptors(channels: Any, size: int, count: int) -> None:
    sender, receiver = channels
    files = [os.memfd_create(f"test-{index}") for index in range(count)]
    payload = os.urandom(size)
    try:
        for index, fd in enumerate(files):
            os.write(fd, b"file %d" % index)
        thread = threading.Thread(target=sender.send_bytes, args=(payload, files))
        thread.start()
        frame, received = receiver.recv_frame()
        thread.join(timeout=30)
        assert frame == payload
        assert len(received) == count
        for index, fd in enumerate(received):
            assert os.pread(fd, 16, 0) == b"file %d" % index  # the same file
            os.close(fd)
        sender.send_bytes(b"plain")
        assert receiver.recv_frame() == (bytearray(b"plain"), [])
    finally:
        for fd in files:
            os.close(fd)


def test_unexpected_descriptors_are_closed_and_refused(channels: Any) -> None:
    sender, receiver = channels
    fd = os.memfd_create("test")
    before = set(os.listdir("/proc/self/fd"))
    sender.send_bytes(b"x", [fd])
    with pytest.raises(OSError, match="unexpected"):
        receiver.recv_bytes()
    os.close(fd)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_too_many_descriptors_are_refused(channels: Any) -> None:
    sender, _ = channels
    with pytest.raises(ValueError, match="at most"):
        sender.send_bytes(b"x", [0] * (MAX_FDS + 1))


def test_a_closed_channel_drops_descriptors_in_flight() -> None:
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(ours.detach()), Channel(theirs.detach())
    fd = os.memfd_create("in-flight")
    sender.send_bytes(b"x", [fd])
    os.close(fd)
    sender.close()
    receiver.close()  # the kernel frees the unread descriptor with the socket
    assert not [name for name in os.listdir("/proc/self/fd")
                if _link(name).startswith("/memfd:in-flight")]


def _link(name: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        return ""


# -- numpy, where installed ----------------------------------------------------------------

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "datetime64[ns]", "timedelta64[s]", "U7", "S5", "V8", [("a", "<i4"), ("b", "<f8", (2,))],
]


def _array(numpy: Any, dtype: Any, shape: Any) -> Any:
    dtype = numpy.dtype(dtype)
    raw = numpy.frombuffer(os.urandom(int(numpy.prod(shape)) * dtype.itemsize), dtype=numpy.uint8)
    array = raw.view(dtype).reshape(shape).copy()  # (frombuffer over bytes is read-only)
    if dtype.kind in "fc":
        array[numpy.isnan(array)] = 0  # (NaN != NaN would fail the comparison)
    return array


def _same(numpy: Any, a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["large", "fortran", "strided", "read-only", "empty", "0-d"])
def test_numpy_arrays_round_trip(dtype: Any, layout: str) -> None:
    numpy = pytest.importorskip("numpy")
    itemsize = numpy.dtype(dtype).itemsize
    count = 2 * THRESHOLD // itemsize + 3
    if layout == "empty":
        array = _array(numpy, dtype, (0, 4))
    elif layout == "0-d":
        array = _array(numpy, dtype, ())
    elif layout == "fortran":
        array = numpy.asfortranarray(_array(numpy, dtype, (count // 4, 4)))
    elif layout == "strided":
        array = _array(numpy, dtype, (count,))[::3]
    else:
        array = _array(numpy, dtype, (count,))
    if layout == "read-only":
        array.flags.writeable = False
    back, shared = round_trip(array)
    assert _same(numpy, back, array)
    # (numpy's own in-band pickle makes every array writable)
    assert back.flags.f_contiguous or layout != "fortran"  # (a strided one comes back packed)
    # numpy pickles dtypes with metadata (datetime units) in-band, and so
    # arrays that are not contiguous, empty or 0-d; as bytes, which go
    # through the segment when large (lifted), to be copied by numpy.
    out_of_band = numpy.dtype(dtype).kind not in "mM"
    assert back.flags.writeable == (array.flags.writeable or not out_of_band)
    assert shared is (layout in ("large", "fortran", "read-only"))


def test_numpy_object_arrays_stay_in_band() -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.array([{"a": 1}, "x", None, 2.5] * THRESHOLD, dtype=object)
    back, shared = round_trip(array)
    assert not shared
    assert back.tolist() == array.tolist()


def test_pandas_frames_round_trip() -> None:
    pandas = pytest.importorskip("pandas")
    numpy = pytest.importorskip("numpy")
    frame = pandas.DataFrame({"x": numpy.arange(THRESHOLD // 2, dtype="float64"),
                              "y": numpy.arange(THRESHOLD // 2, dtype="int64")})
    back, shared = round_trip(frame)
    assert shared
    pandas.testing.assert_frame_equal(back, frame)


@pytest.mark.parametrize("writeable", [True, False])
def test_a_keeper_compares_numpy_arrays_writable_or_not(writeable: bool) -> None:
    numpy = pytest.importorskip("numpy")
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    bound = numpy.arange(THRESHOLD, dtype="float64")
    bound.flags.writeable = writeable
    first, file = kept_write(keeper, bound)
    again, same_file = kept_write(keeper, bound)
    assert same_file == file and numpy.array_equal(again, bound)
    if writeable:
        bound[-1] = -1.0
    else:
        bound.flags.writeable = True  # (numpy allows it back: the array owns its data)
        bound[-1] = -1.0
        bound.flags.writeable = False
    changed, new_file = kept_write(keeper, bound)
    assert new_file != file and changed[-1] == -1.0 and first[-1] == THRESHOLD - 1
    keeper.close()


def test_a_large_payload_goes_in_pieces_mapped_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three buffers, the middle one across the cut between the two files.
    monkeypatch.setattr(_shm, "PIECES_FROM", THRESHOLD)
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    parts = [Exported(THRESHOLD + 100, 1), Exported(3 * THRESHOLD, 2), Exported(THRESHOLD, 3)]
    blob, sent = keeper.write(_shm.pickle_shared(parts, True))
    assert isinstance(sent, _shm.Pieces) and len(sent.segments) == _shm.PIECES
    assert all(segment.size % os.sysconf("SC_PAGE_SIZE") == 0 for segment in sent.segments[:-1])
    pieces = [Opened(segment.fd) for segment in sent.segments]
    back = _shm.loads(blob, sent.bundle())  # (loads closes the bundle it is given)
    assert [bytes(part.data) for part in back] == [bytes(part.data) for part in parts]
    back[1].data[0] = 9  # copy-on-write, as one file
    assert parts[1].data[0] == 2
    sent.close()
    again_blob, again = keeper.write(_shm.pickle_shared(parts, True))  # the kept pieces
    assert isinstance(again, _shm.Pieces)
    assert [_identity(segment.fd) for segment in again.segments] == [
        piece.file for piece in pieces]
    assert bytes(_shm.loads(again_blob, again.bundle())[2].data) == bytes(parts[2].data)
    again.close()
    parts[1].data[-1] = 7  # in the second file: found, a new payload written
    changed_blob, changed = keeper.write(_shm.pickle_shared(parts, True))
    assert isinstance(changed, _shm.Pieces)
    assert _identity(changed.segments[1].fd) != pieces[1].file
    assert _shm.loads(changed_blob, changed.bundle())[1].data[-1] == 7
    changed.close()
    del back
    keeper.close()
    gc.collect()
    assert not any(piece.is_open() for piece in pieces)


def test_pieces_that_cannot_be_mapped_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fds: Any, total: int) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(_shm, "PIECES_FROM", THRESHOLD)
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    bound = Exported(5 * THRESHOLD + 3, 4)
    blob, sent = keeper.write(_shm.pickle_shared(bound, True))
    assert isinstance(sent, _shm.Pieces)
    monkeypatch.setattr(_shm, "_map_pieces", refuse)
    assert bytes(_shm.loads(blob, sent.bundle()).data) == bytes(bound.data)
    sent.close()
    keeper.close()


def test_pieces_written_by_threads_leave_the_views_of_one_buffer_intact() -> None:
    # The pieces' threads slice views of one buffer. On a free-threaded 3.13
    # views of one buffer share an export count that is not atomic (CPython
    # gh-155606): slicing them from two threads at once lost counts and
    # released the buffer under every view (seen in CI: "operation forbidden
    # on released memoryview object"). Without the slicing lock, 1,024 small
    # views written in 2 pieces failed within 400 rounds in each of 5 runs
    # there; a GIL build never fails, and runs the same check.
    data = bytearray(os.urandom(1024 * 4096))
    base = memoryview(data)
    for _ in range(1000):
        views = [base[index * 4096 : (index + 1) * 4096] for index in range(1024)]
        written = _shm._write_pieces(views, 2)
        written.close()
        for view in views:
            view.release()
        assert base.nbytes == len(data)  # raises ValueError once released
    assert bytes(base[:4096]) == bytes(data[:4096])


# -- bytes, bytearray and memoryview -------------------------------------------------------


@pytest.mark.parametrize("by_value", [True, False])
@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize(
    ("size", "shared"),
    [(0, False), (THRESHOLD - 1, False), (THRESHOLD, True), (3 * THRESHOLD + 7, True)],
)
def test_large_bytes_and_bytearrays_travel_through_a_segment(
    kind: type, size: int, shared: bool, by_value: bool
) -> None:
    data = kind(os.urandom(size))
    back, through_segment = round_trip(data, by_value)
    assert through_segment is shared
    assert type(back) is kind and back == data
    assert _shm.measure(data, by_value)[1] == (size if shared else 0)


@pytest.mark.parametrize("by_value", [True, False])
@pytest.mark.parametrize(
    ("size", "shared"),
    [(0, False), (THRESHOLD - 1, False), (THRESHOLD, True), (3 * THRESHOLD + 7, True)],
)
def test_large_memoryviews_arrive_over_the_mapping(size: int, shared: bool, by_value: bool) -> None:
    data = bytearray(os.urandom(size))
    back, through_segment = round_trip(memoryview(data), by_value)
    assert through_segment is shared
    assert isinstance(back, memoryview) and back == data
    assert not back.readonly
    # over the mapping (no copy), or over the bytearray pickle rebuilt in-band
    assert isinstance(back.obj, bytearray) is not shared


@pytest.mark.parametrize(
    "view",
    [
        memoryview(bytes(range(256)) * 512),  # read-only
        memoryview(bytearray(range(256)) * 512).cast("d"),
        memoryview(bytearray(range(256)) * 512).cast("i", [128, 256]),
        memoryview(bytearray(range(256)) * 512).cast("@q").toreadonly(),
        memoryview(bytearray(range(256)) * 512).cast("i")[::3],  # not contiguous
        memoryview(bytearray(8)).cast("d", []),  # 0-d
        memoryview(b"").cast("h"),
        memoryview(bytearray(b"\x01\x00" * THRESHOLD)).cast("?"),
    ],
    ids=["read-only", "d", "2-d", "@q-read-only", "strided", "0-d", "empty", "bool"],
)
def test_a_memoryview_keeps_its_format_shape_and_read_only_flag(view: memoryview) -> None:
    for by_value in (True, False):
        back, shared = round_trip(view, by_value)
        assert isinstance(back, memoryview)
        assert (back.format, back.shape, back.readonly) == (view.format, view.shape, view.readonly)
        assert back.tobytes() == view.tobytes()  # (in C order; not tolist: NaN != NaN)
        assert back.c_contiguous  # (a view that was not arrives as a packed copy)
        assert shared is (view.nbytes >= THRESHOLD)


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_a_memoryview_of_a_numpy_array_arrives_packed(layout: str) -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(4 * THRESHOLD, dtype="int32").reshape(4, THRESHOLD)
    array = numpy.asfortranarray(array) if layout == "fortran" else array[:, ::2]
    back, shared = round_trip(memoryview(array))
    assert shared and back.c_contiguous and back.format == "i"
    assert back.tolist() == array.tolist()
    assert (numpy.asarray(back) == array).all()


def test_a_memoryview_of_another_format_or_an_empty_nd_shape_is_refused() -> None:
    import ctypes

    with pytest.raises(pickle.PicklingError, match="format '<d'"):
        _shm.pickle_shared(memoryview((ctypes.c_double * THRESHOLD)()), by_value=True)
    with pytest.raises(pickle.PicklingError, match="empty"):
        _shm.pickle_shared(memoryview(bytearray(8)).cast("B", [2, 4])[:0], by_value=False)
    # cast to bytes first, it goes
    back, shared = round_trip(memoryview((ctypes.c_double * THRESHOLD)()).cast("B"))
    assert shared and back.nbytes == 8 * THRESHOLD


def test_writes_into_a_received_memoryview_stay_private() -> None:
    blob, segment = _shm.dumps(memoryview(bytearray(2 * THRESHOLD)), by_value=False)
    assert segment is not None
    first = _shm.loads(blob, os.dup(segment.fd))
    second = _shm.loads(blob, os.dup(segment.fd))
    first[:2] = b"\xff\xff"
    assert bytes(second[:2]) == b"\0\0" and bytes(first[:2]) == b"\xff\xff"
    segment.close()


def test_a_received_memoryview_holds_its_mapping_and_bytes_let_it_go() -> None:
    recycler = _shm.Recycler(keep=4, keep_bytes=1 << 30)
    _shm.take_released()
    blob, segment = _shm.dumps([memoryview(b"m" * THRESHOLD)], False, recycler=recycler)
    assert segment is not None and segment.key
    view = _shm.loads(blob, os.dup(segment.fd))[0].cast("B", [THRESHOLD // 4, 4])
    gc.collect()
    assert _shm.take_released() == []  # the view (of a view) still maps it
    assert view[0, 0] == ord("m")
    del view
    gc.collect()
    assert _shm.take_released() == [segment.key]
    recycler.give(segment)
    # bytes and bytearrays are copied out: the segment is free once loaded
    blob, again = _shm.dumps([b"n" * THRESHOLD, bytearray(THRESHOLD)], False, recycler=recycler)
    assert again is segment
    back = _shm.loads(blob, os.dup(again.fd))
    gc.collect()
    assert back == [b"n" * THRESHOLD, bytearray(THRESHOLD)]
    assert _shm.take_released() == [segment.key]
    recycler.close()


def test_bytes_nested_anywhere_and_met_twice_arrive_once() -> None:
    numpy = pytest.importorskip("numpy")
    big, mutable = os.urandom(2 * THRESHOLD), bytearray(os.urandom(THRESHOLD))
    array = numpy.arange(THRESHOLD, dtype="float64")
    value = {"a": [big, (mutable, big)], "b": {1: mutable}, "c": array,
             "d": Blob(bytearray(THRESHOLD)), "e": memoryview(mutable), "small": b"s" * 10,
             "text": "t" * (2 * THRESHOLD)}
    for by_value in (True, False):
        back, shared = round_trip(value, by_value)
        assert shared
        assert back["a"][0] == big and back["a"][1][1] is back["a"][0]
        assert type(back["a"][1][0]) is bytearray and back["a"][1][0] == mutable
        assert back["b"][1] is back["a"][1][0]  # one bytearray, as pickle keeps it
        assert (back["c"] == array).all() and isinstance(back["d"].data, memoryview)
        assert back["e"] == mutable and back["small"] == b"s" * 10
        assert back["text"] == value["text"]
        inband, through_memory = _shm.measure(value, by_value)
        # each object once; the memoryview is a buffer of its own
        assert through_memory == 2 * THRESHOLD + THRESHOLD + 8 * THRESHOLD + 2 * THRESHOLD
        assert inband < 2 * THRESHOLD + 4096  # the text, and what is around


def test_a_large_bytes_after_a_large_string_is_found() -> None:
    value = ["t" * (3 * THRESHOLD), 7, b"b" * THRESHOLD]
    back, shared = round_trip(value, False)
    assert shared and back == value


def test_a_message_without_large_bytes_is_pickled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The small-object path pays no pickler of persistent ids: only a pickle
    # found holding large bytes is made again.
    def refuse(base: type) -> type:
        raise AssertionError("pickled again")

    monkeypatch.setattr(_shm, "_lifting", refuse)
    for value in [list(range(100_000)), {"k": "v" * (3 * THRESHOLD)}, [b"x" * 1000] * 200]:
        for by_value in (True, False):
            blob, segment = _shm.dumps(value, by_value)
            assert segment is None and blob == _shm._pickle(value, by_value, None)


def test_the_walk_between_frames_knows_each_short_opcode() -> None:
    import pickletools

    fixed = {op.code.encode("latin-1")[0]: op.arg.n if op.arg else 0
             for op in pickletools.opcodes if op.arg is None or op.arg.n in (1, 2)}
    counted = {op.code.encode("latin-1")[0] for op in pickletools.opcodes
               if op.arg is not None and op.arg.n == pickletools.TAKEN_FROM_ARGUMENT1}
    assert fixed == _shm._SHORT
    assert counted == _shm._SHORT_COUNTED


def test_off_linux_bytes_stay_in_band_and_memoryviews_still_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_shm, "AVAILABLE", False)
    view = memoryview(bytearray(os.urandom(16 * THRESHOLD))).cast("i", [THRESHOLD, 4])
    for by_value in (True, False):
        back, shared = round_trip([b"x" * THRESHOLD, view.toreadonly(), view], by_value)
        assert not shared
        assert back[0] == b"x" * THRESHOLD
        assert back[1].readonly and not back[2].readonly
        assert back[2].shape == (THRESHOLD, 4) and back[2].tolist() == view.tolist()


# -- through a process pool ----------------------------------------------------------------


def _echo(value: Any) -> Any:
    return value


def _tail(bound: bytes, view: memoryview) -> tuple[int, int, bytes]:
    return len(bound), view.nbytes, bytes(view[-3:])


def _views(size: int) -> list[Any]:
    data = bytearray(b"r" * size)
    return [memoryview(data).cast("q"), bytes(data), data]


def _memfds() -> list[str]:
    return [target for target in map(_link, os.listdir("/proc/self/fd"))
            if target.startswith("/memfd:parallax")]


def _mapped_memfds() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line.split()[-1] for line in maps if "/memfd:parallax" in line]


def _descriptors() -> set[tuple[str, str]]:
    """This process's open descriptors (number, what it points to), /proc files
    aside, and those closed before they could be read (the listing's own)."""
    found = {(name, _link(name)) for name in os.listdir("/proc/self/fd")}
    return {(name, target) for name, target in found
            if target and not target.startswith("/proc/")}


def test_bytes_and_memoryviews_through_a_process_pool_leave_nothing_behind() -> None:
    import functools

    import parallax

    parallax.map(_echo, [1], mode="process", workers=2)  # (the fork template's socket stays)
    gc.collect()
    before = _descriptors()
    items = [b"i" * THRESHOLD, bytearray(b"j" * (2 * THRESHOLD)),
             memoryview(bytearray(b"k" * (16 * THRESHOLD))).cast("i", [THRESHOLD, 4]),
             {"nested": (b"l" * THRESHOLD, [memoryview(b"q" * THRESHOLD)])}, b"small"]
    with parallax.Executor(mode="process", workers=2) as pool:
        back = list(pool.map(_echo, items))
        bound = functools.partial(_tail, b"f" * (3 * THRESHOLD))
        tails = list(pool.map(bound, [memoryview(bytearray(b"abcdef" * THRESHOLD))] * 3))
        made = list(pool.map(_views, [THRESHOLD * 8, 8]))
    assert back[:3] == items[:3] and back[4] == b"small"
    assert [type(value) for value in back] == [bytes, bytearray, memoryview, dict, bytes]
    assert back[2].shape == (THRESHOLD, 4) and not back[2].readonly
    assert back[3]["nested"][0] == b"l" * THRESHOLD
    assert back[3]["nested"][1][0].readonly and back[3]["nested"][1][0] == b"q" * THRESHOLD
    assert tails == [(3 * THRESHOLD, 6 * THRESHOLD, b"def")] * 3
    large, small = made
    assert large[0].format == "q" and large[0].nbytes == 8 * THRESHOLD
    assert not isinstance(large[0].obj, bytearray)  # over the mapping the worker sent
    assert isinstance(small[0].obj, bytearray)  # (8 bytes: in-band)
    assert large[1] == bytes(large[2]) == b"r" * (8 * THRESHOLD) and type(large[2]) is bytearray
    assert _mapped_memfds() != []  # the large views still map their segments ...
    del back, made, large, small
    gc.collect()
    assert _mapped_memfds() == []  # ... and nothing is left once they are gone
    assert _memfds() == []
    # None opened meanwhile is left (one that was open before may close
    # meanwhile: an earlier test's idle pool going, which is not this one's)
    assert _descriptors() - before == set()


def test_serial_mode_check_pickle_round_trips_a_memoryview_as_process_mode_sends_it() -> None:
    from parallax._serialize import round_trip as check

    view = memoryview(bytearray(range(48))).cast("h", [4, 6]).toreadonly()
    back = check(view, "argument")
    assert isinstance(back, memoryview) and back.readonly
    assert (back.format, back.shape, back.tolist()) == ("h", (4, 6), view.tolist())


def test_a_payload_binding_bytes_goes_in_pieces_and_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import functools

    monkeypatch.setattr(_shm, "PIECES_FROM", THRESHOLD)
    keeper = _keeper.Keeper(keep=4, keep_bytes=1 << 30)
    data = os.urandom(3 * THRESHOLD + 5)
    view = memoryview(bytearray(os.urandom(2 * THRESHOLD)))
    fn = functools.partial(_tail, data, view)  # (called with no more arguments here)
    blob, sent = keeper.write(_shm.pickle_shared(fn, True))
    assert isinstance(sent, _shm.Pieces) and blob[:1] == b"p"
    back = _shm.loads(blob, sent.bundle())
    assert back.args[0] == data and type(back.args[0]) is bytes
    assert back.args[1] == view and isinstance(back.args[1], memoryview)
    assert back() == (len(data), view.nbytes, bytes(view[-3:]))
    sent.close()
    assert len(keeper) == 0  # a bytes object has no weak references: nothing to keep it by
    keeper.close()
