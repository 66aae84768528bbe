"""Large data in process mode: arguments, results and a bound object through
shared memory, and no leak whatever happens (issue #15).

Buffers are made by a class of our own that pickles out of band (protocol 5,
as numpy arrays do), so these tests need no numpy; the numpy tests skip
without it.
"""

from __future__ import annotations

import _thread
import array
import contextlib
import functools
import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import parallax
from conftest import child_pids
from helpers import process_alive
from parallax import _pools, _shm

pytestmark = pytest.mark.skipif(not _shm.AVAILABLE, reason="no memfd_create on this platform")

BIG = _shm.THRESHOLD + 4096


class Blob:
    """Bytes that pickle out of band (protocol 5), as numpy arrays do."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blob, (pickle.PickleBuffer(self.data),)


def blob(seed: int, size: int = BIG) -> Blob:
    return Blob(bytearray(bytes([seed % 251]) * size))


def mapped(value: Any) -> bool:
    """Does ``value`` (a Blob) sit in shared memory rather than in a copy?"""
    # (in the stream, pickle rebuilds the buffer as a bytearray or bytes)
    return isinstance(value.data, memoryview)


def inspect_item(item: Blob) -> tuple[int, int, bool]:
    """What a worker saw: the first byte, the size, and whether it is mapped."""
    return item.data[0], len(item.data), mapped(item)


def scribble(item: Blob) -> int:
    """Write into the argument: the caller's copy and other workers' must not change."""
    first = item.data[0]
    item.data[0] = 255
    return first


def make_blob(seed: int) -> Blob:
    return blob(seed)


def echo(item: Any) -> Any:
    return item


def slice_of(bound: Blob, index: int) -> tuple[int, bool, int]:
    return bound.data[index], mapped(bound), os.getpid()


def memfds() -> list[str]:
    """This process's descriptors of parallax's shared-memory segments."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # (the listing's own descriptor, gone already)
            continue
        if target.startswith("/memfd:parallax"):
            found.append(target)
    return found


def open_fds() -> int:
    """Open descriptors that could be parallax's: not the ``/proc`` files other
    parts of the test process keep open as they please (the session's dask
    scheduler watches this process through psutil, which reads
    ``/proc/<pid>/stat``)."""
    return sum(1 for what in fd_targets().values() if not what.startswith("/proc/"))


def fd_targets() -> dict[str, str]:
    """What each open descriptor is (for the message of a failed leak check)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def dev_shm() -> set[str]:
    """What of /dev/shm this process maps or holds open, and what there is named
    after parallax (the machine's other programs have their own entries)."""
    found = set()
    with open("/proc/self/maps") as maps:
        found.update(line.split()[-1] for line in maps if "/dev/shm/" in line)
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.add(target)
    with contextlib.suppress(OSError):  # (no /dev/shm here)
        found.update(name for name in os.listdir("/dev/shm") if "parallax" in name)
    return found


@pytest.fixture
def executor() -> Any:
    with parallax.Executor(mode="process", workers=2) as pool:
        yield pool


def test_large_arguments_arrive_mapped(executor: Any) -> None:
    seen = list(executor.map(inspect_item, [blob(seed) for seed in range(6)]))
    assert seen == [(seed, BIG, True) for seed in range(6)]


def test_small_arguments_stay_in_the_stream(executor: Any) -> None:
    seen = list(executor.map(inspect_item, [blob(seed, 100) for seed in range(3)]))
    assert seen == [(seed, 100, False) for seed in range(3)]


def test_a_function_writing_into_its_argument_changes_only_its_own_copy(executor: Any) -> None:
    items = [blob(seed) for seed in range(8)]
    assert list(executor.map(scribble, items)) == list(range(8))
    assert [item.data[0] for item in items] == list(range(8))


def keep_and_check(item: Blob) -> bool:
    """Keep every argument in the worker, and check that none of those kept changed."""
    kept = parallax.worker_state().setdefault("kept", [])
    kept.append((item.data[0], item))
    return all(value.data[0] == seed and value.data[-1] == seed for seed, value in kept)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_segments_a_worker_still_maps_are_never_written_again(chunksize: int) -> None:
    # Recycling writes new chunks into segments their worker let go of: never
    # into one whose arrays the worker keeps (here, every one of them).
    with parallax.Executor(mode="process", workers=2) as pool:
        checks = list(pool.map(keep_and_check, [blob(seed) for seed in range(60)],
                               chunksize=chunksize))
    assert all(checks)


@pytest.fixture
def new_segments(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the segments this process creates from now on (not the
    recycled or kept ones it writes again)."""
    created: list[int] = []
    original = _shm._new_segment

    def counting(size: int, key: int = 0, sealable: bool = False) -> _shm.Segment:
        created.append(size)
        return original(size, key, sealable)

    monkeypatch.setattr(_shm, "_new_segment", counting)
    return created


def test_recycled_segments_carry_the_new_chunk_whole(new_segments: list[int]) -> None:
    with parallax.Executor(mode="process", workers=2) as pool:
        seen = list(pool.map(inspect_item, [blob(seed) for seed in range(80)]))
    assert seen == [(seed, BIG, True) for seed in range(80)]
    assert len(new_segments) < 40  # most chunks went into segments written before


def test_large_results_come_home_mapped_and_outlive_the_pool() -> None:
    with parallax.Executor(mode="process", workers=2) as pool:
        results = list(pool.map(make_blob, range(6)))
    gc.collect()
    assert all(mapped(result) for result in results)
    assert [(result.data[0], len(result.data)) for result in results] == [
        (seed, BIG) for seed in range(6)
    ]
    results[0].data[1] = 7  # writable, privately
    assert results[0].data[1] == 7 and results[0].data[2] == 0
    del results
    gc.collect()
    assert memfds() == []


def test_a_result_that_is_its_argument_comes_back_whole(executor: Any) -> None:
    items = [blob(seed) for seed in range(4)]
    back = list(executor.map(echo, items))
    assert [bytes(result.data) for result in back] == [bytes(item.data) for item in items]


def test_a_bound_object_is_written_once_and_mapped_by_every_worker() -> None:
    bound = Blob(bytearray(range(256)) * (BIG // 256 + 1))
    fn = functools.partial(slice_of, bound)
    written: list[int] = []
    original = _shm._new_segment

    def counting(size: int, key: int = 0, sealable: bool = False) -> _shm.Segment:
        written.append(size)
        return original(size, key, sealable)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_shm, "_new_segment", counting)
        with parallax.Executor(mode="process", workers=2) as pool:
            seen = list(pool.map(fn, range(40), chunksize=1))
    assert [value for value, _, _ in seen] == [index % 256 for index in range(40)]
    assert all(was_mapped for _, was_mapped, _ in seen)
    assert written == [len(bound.data)]  # once, however many workers and chunks


class Bound:
    """A large object a function binds, as numpy arrays are: it pickles out of
    band, and the pool can tell when it dies (weak references)."""

    def __init__(self, size: int) -> None:
        self.data = array.array("B", bytes(range(256)) * (size // 256 + 1))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blob, (pickle.PickleBuffer(self.data),)


def mapped_memfds() -> list[str]:
    """parallax's segments this process maps (a mapping holds no descriptor)."""
    with open("/proc/self/maps") as maps:
        return [line.split()[-1] for line in maps if "/memfd:parallax" in line]


def test_a_second_run_over_the_same_object_reuses_its_segment_until_it_changes(
    new_segments: list[int],
) -> None:
    bound = Bound(BIG)
    with parallax.Executor(mode="process", workers=2) as pool:
        for _ in range(3):  # a new partial each time, over the same object
            seen = list(pool.map(functools.partial(slice_of, bound), range(40)))
            assert [value for value, _, _ in seen] == [index % 256 for index in range(40)]
        assert len(new_segments) == 1  # copied once, for three runs
        bound.data[5] = 99  # in place: the next run must see it
        seen = list(pool.map(functools.partial(slice_of, bound), range(8)))
        assert [value for value, _, _ in seen] == [0, 1, 2, 3, 4, 99, 6, 7]
        assert len(new_segments) == 2
        seen = list(pool.map(functools.partial(slice_of, bound), range(8)))
        assert seen[5][0] == 99 and len(new_segments) == 2  # the new bytes are kept now


def test_a_kept_segment_goes_with_its_object_and_with_the_pool() -> None:
    gc.collect()
    before = len(mapped_memfds()), len(memfds())
    with parallax.Executor(mode="process", workers=2) as pool:
        bound = Bound(BIG)
        assert list(pool.map(functools.partial(slice_of, bound), range(4)))[3][0] == 3
        gc.collect()
        assert len(memfds()) > before[1]  # kept for a next run
        del bound
        gc.collect()
        assert (len(mapped_memfds()), len(memfds())) == before  # its object died
        kept = Bound(BIG)
        assert list(pool.map(functools.partial(slice_of, kept), range(4)))[3][0] == 3
    gc.collect()
    assert (len(mapped_memfds()), len(memfds())) == before  # the pool shut down
    del kept


def test_a_large_bound_object_goes_in_pieces_to_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_shm, "PIECES_FROM", BIG // 2)  # (the caller decides; workers follow)
    gc.collect()
    before = len(mapped_memfds()), len(memfds())
    bound = Bound(3 * BIG)
    with parallax.Executor(mode="process", workers=2) as pool:
        for _ in range(2):  # written in pieces, then the kept pieces sent again
            seen = list(pool.map(functools.partial(slice_of, bound), range(0, 3 * BIG, BIG // 10),
                                 chunksize=1))
            assert [value for value, _, _ in seen] == [
                index % 256 for index in range(0, 3 * BIG, BIG // 10)]
            assert all(was_mapped for _, was_mapped, _ in seen)
    del bound, seen
    gc.collect()
    assert (len(mapped_memfds()), len(memfds())) == before


def test_chunks_written_as_they_go_arrive_whole_and_in_order_past_crashes() -> None:
    # Arguments are copied into shared memory one chunk ahead of each worker,
    # into the segments earlier chunks freed: every result still comes, in
    # order, whatever chunk sizes and crashes.
    items = [(index, blob(index, BIG * (1 + index % 3))) for index in range(150)]
    for chunksize in (1, 4):
        results = parallax.map(_crash_or_pass, items, mode="process", workers=2,
                               chunksize=chunksize, errors="return")
        for (index, item), result in zip(items, results, strict=True):
            if index % 97 == 13:
                assert isinstance(result, parallax.WorkerCrashedError)
            else:
                assert bytes(result.data) == bytes(item.data)
        del results, result


@pytest.mark.parametrize("by", ["argument", "result", "bound"])
def test_numpy_arrays_through_a_pool(by: str) -> None:
    numpy = pytest.importorskip("numpy")
    arrays = [numpy.arange(BIG // 8, dtype="float64") * seed for seed in range(4)]
    with parallax.Executor(mode="process", workers=2) as pool:
        if by == "argument":
            sums = list(pool.map(numpy.sum, arrays))
            assert sums == [array.sum() for array in arrays]
        elif by == "result":
            back = list(pool.map(functools.partial(numpy.multiply, arrays[1]), [1.0, 2.0]))
            numpy.testing.assert_array_equal(back[1], arrays[2])
            assert back[1].flags.writeable
        else:
            fn = functools.partial(numpy.take, arrays[3])
            assert list(pool.map(fn, [0, 5, 9])) == [0.0, 15.0, 27.0]


def _crash_or_pass(item: tuple[int, Blob]) -> Blob:
    index, value = item
    if index % 97 == 13:
        os._exit(3)  # mid-chunk: the worker dies holding mapped arguments
    return value


def _slow(item: tuple[int, Blob]) -> int:
    time.sleep(0.02)
    return item[1].data[0]


def _press_ctrl_c(interrupted: threading.Event) -> None:
    """Ctrl-C in the main thread after 0.3 s, again every 0.2 s until it
    arrived: Python raises it wherever the main thread is, and one that
    lands in a finalizer there (a ``__del__``, a weakref callback) is only
    printed, not raised, which is no leak and not what this test is about."""
    if interrupted.wait(0.3):
        return
    while True:
        _thread.interrupt_main()
        if interrupted.wait(0.2):
            return


def test_a_thousand_transfers_with_crashes_and_interrupts_leave_nothing_behind() -> None:
    _pools.shutdown_pools(wait=True)
    fds_before, shm_before = open_fds(), dev_shm()
    targets_before = fd_targets()
    transfers = 0
    # Crashes: workers die mid-chunk, holding mapped arguments; results are
    # large too.
    for round_ in range(3):
        items = [(index, blob(index)) for index in range(round_ * 200, round_ * 200 + 200)]
        results = parallax.map(_crash_or_pass, items, mode="process", workers=2,
                               errors="return")
        transfers += 2 * len(items)
        for (index, _), result in zip(items, results, strict=True):
            if index % 97 == 13:
                assert isinstance(result, parallax.WorkerCrashedError)
            else:
                assert result.data[0] == index % 251
        del results, items, result  # (the mapped ones)
    # Interrupts: Ctrl-C in the caller while chunks are on their way.
    for _ in range(2):
        items = [(index, blob(index)) for index in range(100)]
        interrupted = threading.Event()
        presser = threading.Thread(target=_press_ctrl_c, args=(interrupted,))
        presser.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                parallax.map(_slow, items, mode="process", workers=2, chunksize=1)
        finally:
            interrupted.set()
            presser.join()
        transfers += len(items) // 2  # a share of them went out before the interrupt
    # A run abandoned half-way, and workers killed under their chunks.
    with parallax.Executor(mode="process", workers=2) as pool:
        stream = pool.imap(_slow, [(index, blob(index)) for index in range(60)])
        assert [next(stream) for _ in range(10)] == list(range(10))
        stream.close()
        transfers += 20
    with parallax.Executor(mode="process", workers=2) as pool:
        pending = [pool.submit(_slow, (index, blob(index))) for index in range(40)]
        time.sleep(0.2)
        pool.kill_workers()
        for future in pending:
            if not future.cancelled():
                error = future.exception()
                assert error is None or isinstance(error, parallax.WorkerCrashedError), error
        transfers += 10
    assert transfers >= 1000
    _pools.shutdown_pools(wait=True)
    gc.collect()
    assert memfds() == []
    assert dev_shm() <= shm_before
    opened = {fd: what for fd, what in fd_targets().items() if targets_before.get(fd) != what}
    assert open_fds() <= fds_before, opened


KILLED_CALLER = """
import functools, os, pickle, sys
import parallax

class Blob:
    def __init__(self, data): self.data = data
    def __reduce_ex__(self, protocol): return Blob, (pickle.PickleBuffer(self.data),)

def hold(where, item):
    with open(os.path.join(where, str(os.getpid())), "w"):
        pass
    import time; time.sleep(60)

parallax.map(functools.partial(hold, sys.argv[1]), [Blob(bytearray(3 << 20)) for _ in range(8)],
             mode="process", workers=2, chunksize=1)
"""


def test_a_caller_killed_with_sigkill_leaves_no_worker_and_nothing_in_dev_shm(
    tmp_path: Path,
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(KILLED_CALLER)
    shm_before = dev_shm()
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while len([name for name in os.listdir(tmp_path) if name.isdigit()]) < 2:
            assert time.monotonic() < deadline, "workers never started"
            assert process.poll() is None
            time.sleep(0.05)
        workers = [int(name) for name in os.listdir(tmp_path) if name.isdigit()]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The workers follow their caller (the kernel kills them), and with the
    # last process mapping them the segments are gone: memfds have no name.
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if process_alive(pid)]
    assert dev_shm() <= shm_before
    assert not child_pids()

