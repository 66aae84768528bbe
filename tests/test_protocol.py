"""The worker wire protocol (``_protocol``): messages, payloads, the job cache."""

from __future__ import annotations

import pickle
import queue
import threading
from typing import Any

import pytest

import parallax
from helpers import Boom, double
from parallax import _protocol
from parallax._protocol import (
    ChunkFailed,
    DaskOutcome,
    Hello,
    InitFailed,
    JobCache,
    Loaded,
    Log,
    Message,
    PickledFailure,
    Preload,
    Ready,
    Result,
    Retire,
    Stop,
    Task,
    decode,
    encode,
)
from parallax._units import EVERY_ITEM, Chunk, ChunkResult, Failure, Job

FAILURE = PickledFailure(pickle.dumps(Boom("bad")), "Traceback ...", "helpers.Boom: bad")

MESSAGES: list[Message] = [
    Hello(["/somewhere"], "worker-1", b"init", b"args", 10, 1 << 30, b"key"),
    Hello([], "worker-2", None, None, None, None, b""),
    Hello([], "worker-3", None, None, None, None, b"", b"fin", b"args", 20),
    Task(3, b"function", True, False),
    Task(4, None, False, True),
    Preload(5, b"function"),
    Stop(),
    Ready(),
    Loaded(),
    Retire(),
    Log({"name": "app", "msg": "hello", "levelno": 20, "args": None}),
    FAILURE,
    PickledFailure(None, "", "mod.Unpicklable: x"),
    ChunkFailed(FAILURE),
    InitFailed(FAILURE),
    Result(b"values", {1: FAILURE}, 1.0, 2.0, 0.5, [1.5, 2.0]),
    Result(b"values", None, 1.0, 2.0, 0.5, None),
    DaskOutcome(b"message", "tcp://127.0.0.1:1", 123.0, 2),
    DaskOutcome(b"message", "tcp://127.0.0.1:1", 123.0),
]


def fields(message: Any) -> Any:
    """A message's fields, nested messages compared field by field too."""
    if isinstance(message, Message):
        names: tuple[str, ...] = message.__slots__
        return (type(message), {name: fields(getattr(message, name)) for name in names})
    if isinstance(message, dict):
        return {key: fields(value) for key, value in message.items()}
    return message


def concrete_messages(cls: type[Message]) -> set[type[Message]]:
    found = set()
    for sub in cls.__subclasses__():
        if not sub.__name__.startswith("_"):
            found.add(sub)
        found |= concrete_messages(sub)
    return found


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_every_message_survives_its_round_trip(message: Message) -> None:
    again = decode(encode(message), Message)
    assert type(again) is type(message)
    assert fields(again) == fields(message)
    assert type(message).__name__ in repr(message)


def test_every_message_class_is_tested() -> None:
    assert concrete_messages(Message) == {type(message) for message in MESSAGES}


def test_a_frame_of_another_message_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a Hello message, got Ready"):
        decode(encode(Ready()), Hello)


# -- results -------------------------------------------------------------------------------


def _refuse() -> Any:
    raise RuntimeError("not here")


class LoadsNowhere:
    """Pickles fine, but unpickling it fails (as a class missing in the caller would)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


class BadException(Exception):
    """Pickles fine, but cannot be rebuilt in the caller."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def worker_side(result: ChunkResult) -> Result:
    """A result as the caller receives it: encoded in the worker, decoded here."""
    return decode(encode(Result.of(result)), Result)


def test_a_result_brings_values_failures_and_timings_home() -> None:
    chunk = Chunk.fresh(0, 10, ["a", "b", "c", "d"])
    boom = Boom("item 2")
    result = ChunkResult(chunk, [1, threading.Lock(), None, "four"], {2: Failure(boom, "tb 2")},
                         started=5.0, finished=7.0, cpu=1.5, item_ends=[5.5, 6.0, 6.5, 7.0])
    home = worker_side(result).to_chunk_result(chunk, "worker-1")
    assert home.values == [1, None, None, "four"]
    assert home.worker == "worker-1"
    assert (home.started, home.finished, home.cpu, home.item_ends) == (5.0, 7.0, 1.5,
                                                                       [5.5, 6.0, 6.5, 7.0])
    assert home.interruption is None
    assert home.failures is not None
    assert sorted(home.failures) == [1, 2]
    # the value that did not pickle fails its own item only
    unpicklable = home.failures[1].exception
    assert isinstance(unpicklable, parallax.SerializationError)
    assert str(unpicklable).startswith("the result (")
    assert "of type lock) cannot be pickled: TypeError" in str(unpicklable)
    raised = home.failures[2]
    assert isinstance(raised.exception, Boom) and str(raised.exception) == "item 2"
    assert raised.traceback == "tb 2"


def test_a_result_moves_its_timings_onto_the_callers_clock() -> None:
    chunk = Chunk.fresh(0, 0, [1, 2])
    result = ChunkResult(chunk, [1, 2], started=5.0, finished=7.0, cpu=1.5, item_ends=[6.0, 7.0])
    home = worker_side(result).to_chunk_result(chunk, "w", shift=100.0)
    assert (home.started, home.finished, home.cpu, home.item_ends) == (105.0, 107.0, 1.5,
                                                                       [106.0, 107.0])
    untimed = ChunkResult(chunk, [1, 2], started=5.0, finished=7.0)
    assert worker_side(untimed).to_chunk_result(chunk, "w", shift=100.0).item_ends is None


def test_values_that_do_not_unpickle_in_the_caller_fail_the_chunk() -> None:
    chunk = Chunk.fresh(0, 0, [1, 2])
    home = worker_side(ChunkResult(chunk, [1, LoadsNowhere()])).to_chunk_result(chunk, "w")
    assert home.values == []
    assert home.interrupted_at == EVERY_ITEM
    assert isinstance(home.interruption, parallax.ParallaxError)
    assert str(home.interruption) == (
        "the results of a chunk could not be unpickled in the caller: RuntimeError: not here"
    )
    assert isinstance(home.interruption.__cause__, RuntimeError)


@pytest.mark.parametrize("exception", [BadException("odd"), Boom(threading.Lock())],
                         ids=["does-not-unpickle", "does-not-pickle"])
def test_an_exception_that_cannot_come_home_says_so(exception: BaseException) -> None:
    sent = decode(encode(PickledFailure.of(Failure(exception, "the worker's traceback"))),
                  PickledFailure)
    failure = sent.to_failure()
    assert isinstance(failure.exception, parallax.SerializationError)
    name = f"{type(exception).__module__}.{type(exception).__qualname__}"
    assert str(failure.exception).startswith(f"the worker raised {name}: ")
    assert "could not be pickled back to the caller" in str(failure.exception)
    assert failure.traceback == "the worker's traceback"


def test_an_exception_comes_home_as_itself() -> None:
    failure = PickledFailure.of(Failure(Boom("x"), "tb")).to_failure()
    assert type(failure.exception) is Boom and failure.exception.args == ("x",)
    assert failure.traceback == "tb"


# -- payloads ------------------------------------------------------------------------------


def test_items_that_do_not_pickle_name_the_first_culprit() -> None:
    chunk = Chunk(0, 20, [1, threading.Lock(), threading.Lock()], [0, 3, 4])
    with pytest.raises(TypeError):
        _protocol.encode_items(chunk.items)
    result = _protocol.unpicklable_items(chunk, TypeError("cannot pickle"))
    assert result.values == []
    assert result.interrupted_at == 1
    assert isinstance(result.interruption, parallax.SerializationError)
    assert str(result.interruption).startswith("the argument of item 23 (")


def test_items_that_pickle_one_by_one_but_not_together_fail_the_chunk() -> None:
    chunk = Chunk.fresh(0, 0, [1, 2])
    result = _protocol.unpicklable_items(chunk, TypeError("cannot pickle"))
    assert result.values == []
    assert result.interrupted_at == EVERY_ITEM
    assert isinstance(result.interruption, parallax.ParallaxError)
    assert str(result.interruption) == "the chunk could not be pickled: TypeError: cannot pickle"


def test_items_that_do_not_unpickle_are_an_error_value() -> None:
    error = _protocol.decode_items(pickle.dumps([LoadsNowhere()]), "in the test", " (a hint)")
    assert isinstance(error, parallax.SerializationError)
    assert str(error) == (
        "the arguments could not be unpickled in the test: RuntimeError: not here (a hint)"
    )
    assert isinstance(error.__cause__, RuntimeError)
    assert _protocol.decode_items(_protocol.encode_items([1, 2]), "in the test") == [1, 2]


# -- the job cache -------------------------------------------------------------------------


def test_the_job_cache_hits_misses_and_evicts_the_least_recently_used() -> None:
    cache = JobCache(size=2)
    assert cache.get("a") is None  # miss
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # hit: "a" is now the newest
    cache.put("c", 3)  # evicts "b", the least recently used
    assert "b" not in cache
    assert ("a" in cache, "c" in cache) == (True, True)
    cache.put("d", 4)  # evicts "a"
    assert "a" not in cache and cache.get("c") == 3 and cache.get("d") == 4


def test_the_job_cache_unpickles_a_function_once() -> None:
    cache = JobCache()
    loaded = cache.load(1, pickle.dumps(double), "in the test")
    assert loaded is double
    assert cache.load(1, None, "in the test") is double  # kept: nothing sent
    assert cache.load(1, b"ignored: it is kept", "in the test") is double
    with pytest.raises(KeyError, match="neither kept nor sent"):
        cache.load(2, None, "in the test")


def test_the_job_cache_keeps_a_function_that_does_not_unpickle_as_its_error() -> None:
    cache = JobCache()
    error = cache.load(1, pickle.dumps(LoadsNowhere()), "in the test")
    assert isinstance(error, parallax.SerializationError)
    assert str(error).startswith("the function could not be unpickled in the test: ")
    assert cache.load(1, None, "in the test") is error  # every chunk of the job fails alike


def test_a_pool_and_its_worker_agree_on_the_functions_it_holds() -> None:
    # The pool sends a function only to a worker that does not hold it, so
    # both must forget the same job when a reused one is touched in between.
    from parallax.backends._process import ProcessBackend

    backend = ProcessBackend(workers=1)
    results: queue.SimpleQueue[ChunkResult] = queue.SimpleQueue()
    try:
        jobs = [Job(Scale(factor), results.put) for factor in range(_protocol.JOB_CACHE_SIZE + 1)]
        order = [*jobs[:-1], jobs[0], jobs[-1], jobs[0]]
        for job in order:
            backend.prepare(job)
            backend.submit(job, Chunk.fresh(0, 0, [1]))
            result = results.get(timeout=60)
            assert result.interruption is None, result.interruption
            assert result.values == [job.fn(1)]
    finally:
        backend.shutdown(wait=True)


class Scale:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return self.factor * x


# -- errors that are also the standard library's -------------------------------------------


def test_pickling_failures_are_pickling_errors() -> None:
    chunk = Chunk.fresh(0, 0, [1, threading.Lock()])
    result = _protocol.unpicklable_items(chunk, TypeError("cannot pickle"))
    assert isinstance(result.interruption, pickle.PicklingError)
    home = worker_side(ChunkResult(chunk, [threading.Lock(), 2])).to_chunk_result(chunk, "w")
    assert home.failures is not None
    assert isinstance(home.failures[0].exception, pickle.PicklingError)
    failure = PickledFailure.of(Failure(Boom(threading.Lock()), "tb")).to_failure()
    assert isinstance(failure.exception, pickle.PicklingError)
    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError, match="function"):
        parallax.map(lambda x: lock and x, [1], mode="process")


def test_unpickling_failures_are_unpickling_errors() -> None:
    chunk = Chunk.fresh(0, 0, [1, 2])
    home = worker_side(ChunkResult(chunk, [1, LoadsNowhere()])).to_chunk_result(chunk, "w")
    assert isinstance(home.interruption, pickle.UnpicklingError)
    assert isinstance(_protocol.decode_items(pickle.dumps([LoadsNowhere()]), "here"),
                      pickle.UnpicklingError)
    failure = PickledFailure.of(Failure(BadException("odd"), "tb")).to_failure()
    assert isinstance(failure.exception, pickle.UnpicklingError)
    # neither is the other
    assert not isinstance(home.interruption, pickle.PicklingError)
