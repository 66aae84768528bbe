"""Failures reach the caller as themselves, in the right place, in every mode."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest

import parallax
from conftest import Backend
from helpers import Boom, double, fail_on


def test_raise_gives_the_original_type_with_cause_and_note(backend: Backend) -> None:
    with pytest.raises(Boom, match="bad item 13") as caught:
        backend.map(fail_on({13}), range(50), chunksize=4)
    error = caught.value
    assert isinstance(error.__cause__, parallax.WorkerTraceback)
    assert "Boom: bad item 13" in error.__cause__.text
    assert "fn" in error.__cause__.text  # the worker-side frame is in the traceback
    assert any("item 13" in note for note in error.__notes__)


def test_errors_return_puts_the_exception_in_place(backend: Backend) -> None:
    results = backend.map(fail_on({0, 7, 99}), range(100), errors="return", chunksize=6)
    for index, value in enumerate(results):
        if index in {0, 7, 99}:
            assert isinstance(value, Boom)
            assert f"bad item {index}" in str(value)
        else:
            assert value == index * 2


def test_errors_skip_leaves_failed_items_out(backend: Backend) -> None:
    results = backend.map(fail_on({3, 4, 50}), range(60), errors="skip")
    assert results == [x * 2 for x in range(60) if x not in {3, 4, 50}]


def test_unordered_with_errors_return(backend: Backend) -> None:
    results = backend.map(fail_on({5}), range(40), errors="return", ordered=False)
    assert len(results) == 40
    assert sum(isinstance(value, Boom) for value in results) == 1


def test_executor_stays_usable_after_a_failure(backend: Backend) -> None:
    fn = backend.fn(fail_on({2}))
    with backend.executor(workers=2) as executor:
        with pytest.raises(Boom):
            list(executor.imap(fn, range(20)))
        assert list(executor.imap(backend.fn(double), range(20))) == [x * 2 for x in range(20)]


def test_raise_stops_promptly_and_cancels_what_has_not_started(
    backend: Backend, tmp_path: Path
) -> None:
    marks = str(tmp_path)

    def slow_or_fail(x: int) -> int:
        Path(marks, str(x)).touch()
        if x == 0:
            raise Boom("first")
        time.sleep(0.02)
        return x

    with pytest.raises(Boom):
        backend.map(slow_or_fail, range(400), workers=2, chunksize=1)
    time.sleep(0.2)  # let anything that was running finish
    ran = len(os.listdir(marks))
    assert ran < 100, f"{ran} of 400 items ran after the first failed"


class Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Unpicklable refuses to be pickled")


def test_unpicklable_function_is_a_serialization_error_before_any_work() -> None:
    lock = threading.Lock()

    def uses_a_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(parallax.SerializationError, match="function"):
        parallax.map(uses_a_lock, range(5), mode="process")


def test_unpicklable_argument_names_the_item() -> None:
    data = [1, 2, Unpicklable(), 4]
    with pytest.raises(parallax.SerializationError, match="argument of item 2"):
        parallax.map(lambda x: 1, data, mode="process")
    results = parallax.map(lambda x: 1, data, mode="process", errors="return", chunksize=4)
    assert results[:2] == [1, 1] and results[3] == 1
    assert isinstance(results[2], parallax.SerializationError)


def test_unpicklable_result_names_the_item() -> None:
    def make(x: int) -> object:
        return Unpicklable() if x == 3 else x

    with pytest.raises(parallax.SerializationError, match="result") as caught:
        parallax.map(make, range(6), mode="process", chunksize=2)
    assert any("item 3" in note for note in caught.value.__notes__)
    results = parallax.map(make, range(6), mode="process", errors="return", chunksize=6)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]
    assert isinstance(results[3], parallax.SerializationError)


class StubbornError(Exception):
    """Pickles, but cannot be rebuilt (its __init__ needs two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def test_exception_that_cannot_be_rebuilt_still_reports() -> None:
    def fail(x: int) -> int:
        raise StubbornError(x, 2)

    with pytest.raises(parallax.SerializationError, match="StubbornError") as caught:
        parallax.map(fail, [1], mode="process")
    assert "StubbornError: 1/2" in str(caught.value.__cause__)


@pytest.mark.parametrize("what", ["function", "argument", "result"])
def test_serial_check_pickle_catches_what_process_mode_would(what: str) -> None:
    lock = threading.Lock()
    fn = (lambda x: threading.Lock()) if what == "result" else (lambda x: x)
    if what == "function":
        fn = lambda x: lock and x  # noqa: E731 - a closure over a lock
    data = [Unpicklable()] if what == "argument" else [1]
    with pytest.raises(parallax.SerializationError, match=what):
        parallax.map(fn, data, mode="serial", check_pickle=True)


def test_serialization_error_is_a_pickle_error() -> None:
    assert issubclass(parallax.SerializationError, pickle.PickleError)
    assert issubclass(parallax.TaskTimeoutError, TimeoutError)
    assert issubclass(parallax.WorkerCrashedError, parallax.ParallaxError)


def test_keyboard_interrupt_raised_by_fn_in_a_worker_is_an_item_error(backend: Backend) -> None:
    if backend.mode == "serial":
        pytest.skip("serial runs in the caller's thread: KeyboardInterrupt stops the caller")

    def interrupting(x: int) -> int:
        if x == 1:
            raise KeyboardInterrupt
        return x

    results = backend.map(interrupting, range(4), errors="return")
    assert isinstance(results[1], KeyboardInterrupt)
    assert [results[0], results[2], results[3]] == [0, 2, 3]


def test_shared_pool_error_gets_no_pile_of_notes(backend: Backend) -> None:
    from faults import failing_initializer

    results = backend.map(abs, range(6), initializer=failing_initializer, errors="return")
    assert all(isinstance(result, parallax.ParallaxError) for result in results)
    assert len(getattr(results[0], "__notes__", [])) <= 1


@pytest.mark.parametrize("errors", ["raise", "return", "skip"])
def test_serial_map_runs_like_a_loop_around_a_failure(errors: str) -> None:
    # One chunk of the whole list in serial mode: on "raise" nothing after the
    # failing item runs, as in a for loop; the other policies run every item.
    ran: list[int] = []

    def record(x: int) -> int:
        ran.append(x)
        if x == 500:
            raise Boom("bad item 500")
        return x

    data = list(range(10_000))
    if errors == "raise":
        with pytest.raises(Boom, match="bad item 500") as caught:
            parallax.map(record, data, mode="serial", errors=errors)
        assert any("item 500" in note for note in caught.value.__notes__)
        assert ran == data[:501]
    else:
        results = parallax.map(record, data, mode="serial", errors=errors)
        assert ran == data
        assert len(results) == (10_000 if errors == "return" else 9_999)


def test_serial_retries_still_run_the_rest_of_the_chunk() -> None:
    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x == 3 and attempts[x] == 1:
            raise Boom("first try fails")
        return x * 2

    assert parallax.map(flaky, range(10), mode="serial", retries=1) == [x * 2 for x in range(10)]
    assert attempts == {x: 2 if x == 3 else 1 for x in range(10)}


def test_raise_stops_a_chunk_at_its_failing_item(backend: Backend, tmp_path: Path) -> None:
    # One chunk, one worker: with errors="raise" nothing after the failing
    # item runs in it, as in a for loop. Each call leaves a file, which a
    # worker process can do too.
    if backend.coroutines:
        pytest.skip("asyncio runs a chunk's items concurrently: the later ones have started")
    marks = str(tmp_path)

    def marked(x: int) -> int:
        Path(marks, str(x)).touch()
        if x == 20:
            raise Boom("bad item 20")
        return x

    with pytest.raises(Boom, match="bad item 20"):
        backend.map(marked, range(200), chunksize=200, workers=1)
    assert sorted(int(name) for name in os.listdir(marks)) == list(range(21))
