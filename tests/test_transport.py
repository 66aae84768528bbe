"""What crosses the process boundary, and what a process worker has to load to start."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import parallax
from conftest import Backend
from helpers import double, has_cloudpickle
from parallax._serialize import dumps, dumps_plain, loads, needs_cloudpickle
from parallax._wire import Channel


def test_a_process_worker_starts_without_heavy_modules() -> None:
    # A cold process pool waits for its workers to boot; every module the
    # worker's own code imports is paid on each start.
    heavy = ["cloudpickle", "typing", "dataclasses", "inspect", "socket", "ctypes", "asyncio",
             "concurrent.futures", "logging", "traceback"]
    script = (
        "import json, sys; from parallax._procworker import main; "
        f"print(json.dumps([name for name in {heavy!r} if name in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_the_fork_template_holds_no_heavy_modules() -> None:
    # What the template imports, every worker it forks has from the first
    # instruction (shared pages, paid once per caller, not per worker): still
    # no heavy module. ``socket`` (descriptors arrive with SCM_RIGHTS) and
    # ``ctypes`` (PR_SET_PDEATHSIG for each child) are its own, on purpose.
    heavy = ["cloudpickle", "typing", "dataclasses", "inspect", "asyncio",
             "concurrent.futures", "logging", "traceback", "subprocess", "pickletools"]
    script = (
        "import json, sys; from parallax._template import _prepare; _prepare(); "
        f"print(json.dumps([name for name in {heavy!r} if name in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_results_of_classes_sent_by_value_come_home(backend: Backend) -> None:
    class Point:  # defined here: it travels to a worker by value
        def __init__(self, x: int) -> None:
            self.x = x

    def make(x: int) -> Any:
        return Point(x)

    points = backend.map(make, range(5), chunksize=2)
    assert [point.x for point in points] == [0, 1, 2, 3, 4]


def test_plain_pickling_falls_back_to_cloudpickle() -> None:
    square = loads(dumps_plain(lambda x: x * x))
    assert square(7) == 49
    assert loads(dumps_plain({"a": [1, 2.5, b"x"]})) == {"a": [1, 2.5, b"x"]}


def test_what_needs_cloudpickle_to_load_is_told_by_its_bytes() -> None:
    # A pool whose function pickled by value has its workers forked from a
    # template that imported cloudpickle first (_template._warm_up); one
    # whose function travels by reference does not.
    def local(x: int) -> int:
        return x

    class Local:
        pass

    for by_value in (local, lambda x: x, Local, Local(), [1, local]):
        assert needs_cloudpickle(dumps(by_value)), by_value
    # By reference, even under a name that spells it.
    for by_reference in (double, has_cloudpickle, os.getpid, [1, 2.5, "cloudpickle"]):
        assert not needs_cloudpickle(dumps(by_reference)), by_reference


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 5_000_000])
def test_channel_frames_survive_any_size(size: int) -> None:
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(ours.detach()), Channel(theirs.detach())
    payload = os.urandom(size)
    try:
        # A large frame fills the socket buffer: send from another thread.
        thread = threading.Thread(target=sender.send_bytes, args=(payload,))
        thread.start()
        assert receiver.recv_bytes() == payload
        thread.join(timeout=30)
        sender.close()
        with pytest.raises(EOFError):
            receiver.recv_bytes()
    finally:
        sender.close()
        receiver.close()


def test_a_tail_view_reads_the_source_without_copying() -> None:
    from parallax._chunking import Tail

    source = list(range(10))
    tail = Tail(source, 7)
    assert len(tail) == 3
    assert list(tail) == [7, 8, 9]
    assert (tail[0], tail[-1], tail[1:]) == (7, 9, [8, 9])
    with pytest.raises(IndexError):
        tail[3]
    assert pickle.loads(pickle.dumps(tail)) == [7, 8, 9]  # only its own items travel
    source[8] = 80  # a view: it reads the source, it holds no copy
    assert tail[1] == 80 and list(tail) == [7, 80, 9]
    assert list(Tail((1, 2, 3), 1)) == [2, 3]


@pytest.mark.parametrize("start", [0, 1, 37])
def test_map_results_splice_around_the_largest_batch(backend: Backend, start: int) -> None:
    # The auto probe's first items, a short chunk and one long one: in order.
    data = list(range(start, start + 5_000))
    assert backend.map(double, data) == [x * 2 for x in data]
    assert parallax.map(double, data) == [x * 2 for x in data]


def test_a_preloaded_function_is_loaded_before_its_first_chunk() -> None:
    import queue
    import time

    from parallax._units import Chunk, ChunkResult, Job
    from parallax.backends._process import ProcessBackend

    backend = ProcessBackend(workers=1)
    try:
        assert backend.starting  # a fresh interpreter takes a while to boot
        results: queue.SimpleQueue[ChunkResult] = queue.SimpleQueue()
        job = Job(double, results.put)
        backend.preload(job)
        deadline = time.monotonic() + 60
        while backend.starting and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not backend.starting  # the worker said it loaded the function
        backend.submit(job, Chunk.fresh(0, 0, [1, 2, 3]))
        assert results.get(timeout=60).values == [2, 4, 6]
    finally:
        backend.shutdown(wait=True)


def _use_proxies(args: tuple[Any, Any, Any, int]) -> int:
    shared, event, inbox, x = args
    shared[x] = x * 2
    inbox.put(x)
    if x == 3:
        event.set()
    return x


def test_manager_proxies_work_in_process_workers() -> None:
    # Workers share the caller's multiprocessing authkey (sent in the
    # handshake), so Manager proxies connect instead of AuthenticationError.
    import multiprocessing

    with multiprocessing.Manager() as manager:
        shared, event, inbox = manager.dict(), manager.Event(), manager.Queue()
        data = [(shared, event, inbox, x) for x in range(4)]
        assert parallax.map(_use_proxies, data, mode="process", workers=2, chunksize=1) == [
            0, 1, 2, 3]
        assert dict(shared) == {x: x * 2 for x in range(4)}
        assert event.is_set()
        assert sorted(inbox.get(timeout=10) for _ in range(4)) == [0, 1, 2, 3]
