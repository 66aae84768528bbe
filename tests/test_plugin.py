"""The pytest plugin, exercised in a pytester sandbox, and the pickling trap
it helps close: the checks ``--parallax-check-pickle`` turns on, in every
mode, and auto mode's note on work that would not pickle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import parallax
from conftest import Backend
from helpers import add, double, identity
from parallax import SerializationError
from parallax._auto import Facts, decide
from parallax._config import set_pickle_checks

pytest_plugins = ["pytester"]

TEST_FILE = """
import parallax

def where(x):
    return x

def test_mode():
    with parallax.monitor() as mon:
        parallax.map(where, [1, 2], mode="process")
    print("MODE=" + mon.runs[-1].mode)

def test_each(parallax_mode):
    with parallax.monitor() as mon:
        assert parallax.map(where, [1, 2], mode="thread") == [1, 2]
    assert mon.runs[-1].mode == parallax_mode
"""


def test_parallax_mode_option_forces_a_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("-s", "-k", "test_mode", "--parallax-mode=serial")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*MODE=serial*"])


def test_parallax_mode_fixture_runs_every_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("-v", "-k", "test_each", "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*test_each?serial?*", "*test_each?thread?*", "*test_each?process?*",
         "*test_each?free-threaded?*"]
    )


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("--parallax-mode=warp")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*valid modes*"])


CHECK_FILE = """
import threading

import parallax

def first(pair):
    return pair[0]

def test_lock_in_an_argument():
    # tiny input: auto runs it serially, where a lock needs no pickling
    assert parallax.map(first, [(1, threading.Lock())]) == [1]
"""


def test_check_pickle_option_catches_what_auto_mode_hides(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=CHECK_FILE)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--parallax-check-pickle")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*CannotPickleError*argument*cannot be pickled*lock*"])


@pytest.mark.parametrize(("value", "passed"), [("1", 0), ("true", 0), ("0", 1), ("", 1)])
def test_check_pickle_environment_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str, passed: int
) -> None:
    pytester.makepyfile(test_sample=CHECK_FILE)
    monkeypatch.setenv("PARALLAX_CHECK_PICKLE", value)
    pytester.runpytest_subprocess().assert_outcomes(passed=passed, failed=1 - passed)


def test_a_bad_check_pickle_variable_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_sample=CHECK_FILE)
    monkeypatch.setenv("PARALLAX_CHECK_PICKLE", "maybe")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*PARALLAX_CHECK_PICKLE='maybe'*"])


# -- the checks themselves, in every mode (as --parallax-check-pickle turns them on) --------


@pytest.fixture
def pickle_checks() -> Iterator[None]:
    previous = set_pickle_checks(True)
    try:
        yield
    finally:
        set_pickle_checks(previous)


def first(pair: tuple[Any, ...]) -> Any:
    return pair[0]


def make_lock(_: object) -> Any:
    return threading.Lock()


@pytest.mark.usefixtures("pickle_checks")
@pytest.mark.parametrize("api", ["map", "imap", "starmap"])
def test_picklable_work_runs_as_before(backend: Backend, api: str) -> None:
    if api == "starmap":
        assert backend.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    else:
        assert list(getattr(backend, api)(double, range(20))) == [2 * x for x in range(20)]


@pytest.mark.usefixtures("pickle_checks")
def test_an_unpicklable_argument_fails_in_every_mode(backend: Backend) -> None:
    with pytest.raises(SerializationError, match=r"argument.*cannot be pickled"):
        backend.map(first, [(1,), (2, threading.Lock())])


@pytest.mark.usefixtures("pickle_checks")
def test_an_unpicklable_result_fails_in_every_mode(backend: Backend) -> None:
    with pytest.raises(SerializationError, match=r"result.*cannot be pickled"):
        backend.map(make_lock, [1, 2])


@pytest.mark.usefixtures("pickle_checks")
def test_an_unpicklable_function_fails_before_any_work(backend: Backend) -> None:
    lock = threading.Lock()
    ran: list[int] = []

    def locked(x: int) -> int:
        ran.append(x)
        with lock:
            return x

    with pytest.raises(SerializationError, match="cannot be pickled"):
        backend.map(locked, [1, 2])
    assert ran == []


@pytest.mark.usefixtures("pickle_checks")
def test_auto_mode_checks_the_probed_items() -> None:
    with pytest.raises(SerializationError, match=r"argument.*cannot be pickled"):
        parallax.map(first, [(1, threading.Lock())])


@pytest.mark.usefixtures("pickle_checks")
def test_executor_and_submit_check_in_every_mode(backend: Backend) -> None:
    if backend.coroutines:
        pytest.skip("asyncio mode runs coroutine functions; identity is none")
    with backend.executor() as executor:
        assert executor.submit(identity, 3).result() == 3
        with pytest.raises(SerializationError, match="argument 0"):
            executor.submit(identity, threading.Lock())
        assert list(executor.map(identity, [1, 2])) == [1, 2]
        with pytest.raises(SerializationError, match="result"):
            list(executor.map(make_lock, [1]))


@pytest.mark.usefixtures("pickle_checks")
def test_parallel_submit_checks() -> None:
    with pytest.raises(SerializationError, match="argument 0"):
        parallax.parallel(mode="thread")(identity).submit(threading.Lock())


def test_checks_are_off_by_default(backend: Backend) -> None:
    if backend.processes or backend.mode == "dask":
        pytest.skip("these modes pickle anyway")
    assert backend.map(first, [(1, threading.Lock())]) == [1]


# -- auto mode says when what it runs in the caller or on threads would not pickle ---------


def test_decide_notes_unpicklable_work_kept_off_processes() -> None:
    tiny = Facts(probed=2, item_wall=1e-6, item_cpu=1e-6, total=2, cpus=4,
                 picklable=False, unpicklable="the function f", unpicklable_why=" (TypeError: x)")
    chosen = decide(tiny)
    assert chosen.mode == "serial"
    assert chosen.reason.startswith("tiny input")
    assert "note: the function f cannot be pickled (TypeError: x)" in chosen.reason
    assert "would fail in process mode" in chosen.reason and "check_pickle" in chosen.reason
    waiting = tiny.replace(item_wall=0.01, item_cpu=1e-5, total=1000)
    assert decide(waiting).mode == "thread"
    assert "note: the function f cannot be pickled" in decide(waiting).reason
    # CPU-bound work already says why it is not in a process, once
    heavy = tiny.replace(item_wall=0.01, item_cpu=0.01, total=1000)
    assert decide(heavy).mode == "serial"
    assert decide(heavy).reason.count("cannot be pickled") == 1
    assert "note" not in decide(tiny.replace(picklable=True)).reason


def test_plan_names_an_unpicklable_first_item() -> None:
    reason = parallax.plan(first, [(1, threading.Lock())]).reason
    assert "note: the first item, (1, <unlocked _thread" in reason
    assert "cannot be pickled (TypeError: cannot pickle '_thread.lock' object)" in reason


def test_a_run_reason_names_an_unpicklable_function() -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    with parallax.monitor() as mon:
        assert parallax.map(locked, [1, 2]) == [1, 2]
    assert mon.runs[0].mode == "serial"
    assert "note: the function " in mon.runs[0].reason
    assert "locked cannot be pickled" in mon.runs[0].reason


def test_picklable_work_gets_no_note() -> None:
    assert "note" not in parallax.plan(first, [(1, 2)]).reason
    assert "note" not in parallax.plan(lambda x: x, [1, 2]).reason
