"""CPython's own concurrent.futures tests, run against ``parallax.Executor``.

The test classes below are the stdlib's (``test.test_concurrent_futures`` of
the running interpreter) combined with a parallax executor type from
``stdlib_adapter``, which translates argument *names* and nothing else. Three
tables, keyed by ``Class::test``, say what is not plainly expected to pass:

* ``SKIPS``: the test reads stdlib internals (``_processes``, ``_threads``,
  ...), mocks stdlib private classes, or exercises a stdlib class directly
  rather than ``executor_type``. Where such a test has a public core, that
  core is ported in ``PortedTests`` below (same name, same assertions).
* ``KNOWN_FAILURES``: fails today because of a parallax bug or difference;
  the reason names the root cause. Marked ``xfail(strict=True)``: when a fix
  lands the test XPASSes, which fails the run until the entry is removed.
* ``HANGS``: as ``KNOWN_FAILURES``, for tests that block; bounded by
  ``HANG_TIMEOUT``.
* ``FLAKY``: fails only when a race inside parallax goes one way; a
  non-strict xfail, each pointing at a strictly listed deterministic sibling
  or saying why none can exist.

Listed failures and hangs run in a child pytest process of their own, so a
broken pool they leave behind cannot spill into the tests after them; the
child's output is part of the failure report. docs/stdlib-conformance.md
explains it all.
"""

from __future__ import annotations

import functools
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import weakref
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ClassVar

import pytest

import parallax
from conftest import child_pids, parallax_threads, wait_until
from stdlib_adapter import executor_mixins, load_stdlib

STDLIB, MISSING = load_stdlib()


def test_stdlib_suite_available() -> None:
    """Says why nothing ran when this interpreter has no stdlib test suite."""
    if not STDLIB:
        pytest.skip(MISSING)

@pytest.fixture(scope="module", autouse=True)
def resource_tracker() -> None:
    """Start multiprocessing's resource tracker before any test.

    A spawn-context ``Manager`` or semaphore (the process tests build them
    with ``self.get_context()``) starts it once, and it then lives as long as
    this process: started by a test, the leak check would count it against
    that test.
    """
    if STDLIB:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()


#: set in the child pytest process that runs one listed test on its own
CHILD_VARIABLE = "PARALLAX_CONFORMANCE_CHILD"
IN_CHILD = os.environ.get(CHILD_VARIABLE) == "1"
#: seconds a test listed in HANGS may take before it counts as hung
HANG_TIMEOUT = 20
#: seconds a listed failing test may take in its child process
CHILD_TIMEOUT = 100
REPO = Path(__file__).resolve().parents[1]

_INTERNALS = "reads stdlib internals ({names}); no public equivalent"
_PORTED = "reads stdlib internals ({names}); its public core is PortedTests::{port}"
_STDLIB_CLASS = (
    "exercises concurrent.futures.{cls} itself, not executor_type; "
    "ported as PortedTests::{port}"
)
_SCRIPT = (
    "its child script imports the executor from concurrent.futures by class name, "
    "which cannot name parallax; ported as PortedTests::{port}"
)

SKIPS: dict[str, str] = {
    # -- thread mode ------------------------------------------------------------------
    "ThreadExecutorTest::test_default_workers": _INTERNALS.format(
        names="_max_workers; the default size is each library's own policy"),
    "ThreadExecutorTest::test_saturation": _PORTED.format(
        names="_threads, _max_workers", port="test_saturation"),
    "ThreadExecutorTest::test_idle_thread_reuse": _INTERNALS.format(
        names="_threads; how many idle threads are reused is pool policy"),
    "ThreadExecutorTest::test_hang_global_shutdown_lock": (
        "exercises ThreadPoolExecutor and ProcessPoolExecutor(fork) themselves "
        "(bpo-45021, a lock in the stdlib module); nothing of executor_type"),
    "ThreadShutdownTest::test_threads_terminate": _PORTED.format(
        names="_threads", port="test_threads_terminate"),
    "ThreadShutdownTest::test_context_manager_shutdown": _STDLIB_CLASS.format(
        cls="ThreadPoolExecutor", port="test_context_manager_shutdown"),
    "ThreadShutdownTest::test_del_shutdown": _STDLIB_CLASS.format(
        cls="ThreadPoolExecutor", port="test_del_shutdown"),
    "ThreadShutdownTest::test_shutdown_no_wait": _STDLIB_CLASS.format(
        cls="ThreadPoolExecutor", port="test_shutdown_no_wait"),
    "ThreadShutdownTest::test_thread_names_assigned": (
        "exercises ThreadPoolExecutor's thread_name_prefix (and _threads); parallax names "
        "its threads itself and the adapter drops thread_name_prefix"),
    "ThreadShutdownTest::test_thread_names_default": (
        "exercises ThreadPoolExecutor's default thread names (and _threads); parallax's "
        "naming is its own"),
    "ThreadShutdownTest::test_cancel_futures_wait_false": _STDLIB_CLASS.format(
        cls="ThreadPoolExecutor", port="test_cancel_futures_wait_false"),
    "ThreadShutdownTest::test_interpreter_shutdown": _SCRIPT.format(
        port="test_interpreter_shutdown"),
    "ThreadShutdownTest::test_submit_after_interpreter_shutdown": _SCRIPT.format(
        port="test_submit_after_interpreter_shutdown"),
    "ThreadShutdownTest::test_hang_gh83386": _SCRIPT.format(port="test_hang_gh83386"),
    "ThreadFailingInitializerTest::test_initializer": _PORTED.format(
        names="_broken, and the 'concurrent.futures' logger",
        port="test_failing_initializer"),
    # -- process mode -----------------------------------------------------------------
    "ProcessExecutorTest::test_killed_child": _PORTED.format(
        names="_processes", port="test_killed_child"),
    "ProcessExecutorTest::test_saturation": _PORTED.format(
        names="_processes, _max_workers", port="test_saturation"),
    "ProcessExecutorTest::test_idle_process_reuse_one": _INTERNALS.format(
        names="_processes, _max_workers; idle-worker reuse is pool policy"),
    "ProcessExecutorTest::test_idle_process_reuse_multiple": _INTERNALS.format(
        names="_processes, _max_workers; idle-worker reuse is pool policy"),
    "ProcessExecutorTest::test_max_tasks_per_child": _PORTED.format(
        names="_processes", port="test_max_tasks_per_worker"),
    "ProcessExecutorTest::test_max_tasks_per_child_defaults_to_spawn_context": (
        _INTERNALS.format(names="_mp_context; parallax takes no multiprocessing context")),
    "ProcessExecutorTest::test_traceback": _PORTED.format(
        names="concurrent.futures.process._RemoteTraceback", port="test_traceback"),
    "ProcessExecutorTest::test_python_finalization_error": (
        "mocks threading._start_joinable_thread to break the stdlib's manager thread; "
        "parallax starts its threads differently, so the mock tests nothing of it"),
    "ProcessShutdownTest::test_processes_terminate": _PORTED.format(
        names="_processes", port="test_context_manager_shutdown"),
    "ProcessShutdownTest::test_context_manager_shutdown": _STDLIB_CLASS.format(
        cls="ProcessPoolExecutor", port="test_context_manager_shutdown"),
    "ProcessShutdownTest::test_del_shutdown": _STDLIB_CLASS.format(
        cls="ProcessPoolExecutor", port="test_del_shutdown"),
    "ProcessShutdownTest::test_shutdown_no_wait": _STDLIB_CLASS.format(
        cls="ProcessPoolExecutor", port="test_shutdown_no_wait"),
    "ProcessShutdownTest::test_interpreter_shutdown": _SCRIPT.format(
        port="test_interpreter_shutdown"),
    "ProcessShutdownTest::test_submit_after_interpreter_shutdown": _SCRIPT.format(
        port="test_submit_after_interpreter_shutdown"),
    "ProcessShutdownTest::test_hang_gh83386": (
        "skipped by CPython itself for ProcessPoolExecutor (cpython#83386), and its "
        "child script cannot name parallax; ported as PortedTests::test_hang_gh83386"),
    "ProcessFailingInitializerTest::test_initializer": _PORTED.format(
        names="_broken; also passes a multiprocessing.Queue as initargs",
        port="test_failing_initializer"),
    "ProcessDeadlockTest::test_shutdown_deadlock_pickle": _PORTED.format(
        names="_executor_manager_thread", port="test_shutdown_deadlock_pickle"),
    "ProcessDeadlockTest::test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
        "mocks the stdlib's private _ExecutorManagerThread and _ThreadWakeup; against "
        "parallax the mocks are inert (its public core, map over 100 items, is test_map)"),
}

_SUBMIT_PICKLE = (
    "an unpicklable argument makes submit() itself raise SerializationError (naming the "
    "argument); the stdlib returns a future that fails with the PicklingError"
)
_UNPICKLE_TYPE = (
    "a task or result that fails to unpickle (an exception or SystemExit in __reduce__'s "
    "callable) fails its future with CannotUnpickleError; the stdlib raises BrokenProcessPool"
)

KNOWN_FAILURES: dict[str, str] = {
    # -- both modes -------------------------------------------------------------------
    "ThreadExecutorTest::test_max_workers_negative": (
        "naming: parallax says 'workers must be a positive integer ...' where the stdlib "
        "says 'max_workers must be greater than 0' (_config.check_workers)"),
    "ProcessExecutorTest::test_max_workers_negative": (
        "naming: parallax says 'workers must be a positive integer ...' where the stdlib "
        "says 'max_workers must be greater than 0' (_config.check_workers)"),
    # -- process mode -----------------------------------------------------------------
    "ProcessDeadlockTest::test_error_at_task_pickle": _SUBMIT_PICKLE,
    "PortedProcessTest::test_shutdown_deadlock_pickle": _SUBMIT_PICKLE,
    "ProcessDeadlockTest::test_exit_at_task_unpickle": _UNPICKLE_TYPE,
    "ProcessDeadlockTest::test_error_at_task_unpickle": _UNPICKLE_TYPE,
    "ProcessDeadlockTest::test_error_during_result_unpickle_in_result_handler": _UNPICKLE_TYPE,
    "ProcessDeadlockTest::test_exit_during_result_unpickle_in_result_handler": _UNPICKLE_TYPE,
    "ProcessDeadlockTest::test_exit_during_result_pickle_on_worker": (
        "SystemExit while pickling a result in the worker fails the future with "
        "CannotPickleError; the stdlib's worker dies and it raises BrokenProcessPool"),
}

#: None today; a test that blocks goes here, bounded by HANG_TIMEOUT.
HANGS: dict[str, str] = {}

#: Fail or pass depending on a race inside parallax; ``xfail(strict=False)``
#: (a strict mark would make CI flaky), run in a child with HANG_TIMEOUT.
#: Each names a deterministic sibling test that is strictly listed above, or says
#: why none can exist without depending on wall-clock speed.
FLAKY: dict[str, str] = {}


# -- building the test classes ------------------------------------------------------------


def _in_child(node: str, timeout: float) -> None:
    """Run one test in a pytest process of its own; raise if it does not pass."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", f"{__file__}::{node}"]
    child = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, CHILD_VARIABLE: "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the workers it started
        output, _ = child.communicate()
        tail = output.decode(errors="replace")[-3000:]
        raise AssertionError(f"{node} did not finish within {timeout} s\n{tail}") from None
    if child.returncode != 0:
        tail = output.decode(errors="replace")[-3000:]
        raise AssertionError(f"{node} failed in its own process:\n{tail}")


def _replacement(cls_name: str, attr: str, method: Callable[..., Any],
                 timeout: float | None) -> Callable[..., Any]:
    """The test as this class runs it: in a child process when it is listed."""

    @functools.wraps(method)
    def test(self: Any) -> Any:
        if timeout is None:
            return method(self)
        return _in_child(f"{cls_name}::{attr}", timeout)

    return test


def _build(name: str, bases: tuple[type, ...]) -> type:
    cls = type(name, bases, {"__module__": __name__})
    for attr in dir(cls):
        if not attr.startswith("test"):
            continue
        key = f"{name}::{attr}"
        marks: list[pytest.MarkDecorator] = []
        timeout: float | None = None
        if key in SKIPS:
            marks.append(pytest.mark.skip(reason=SKIPS[key]))
        elif key in HANGS and not IN_CHILD:
            timeout = HANG_TIMEOUT
            marks.append(pytest.mark.timeout(HANG_TIMEOUT + 30, method="signal"))
            marks.append(pytest.mark.xfail(strict=True, reason=f"hangs: {HANGS[key]}"))
        elif key in FLAKY and not IN_CHILD:
            timeout = HANG_TIMEOUT
            marks.append(pytest.mark.xfail(strict=False, reason=f"flaky: {FLAKY[key]}"))
        elif key in KNOWN_FAILURES and not IN_CHILD:
            timeout = CHILD_TIMEOUT
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[key]))
        if marks:
            # A class's own copy: marks must not land on the shared stdlib function.
            wrapped = _replacement(name, attr, getattr(cls, attr), timeout)
            for mark in marks:
                wrapped = mark(wrapped)
            setattr(cls, attr, wrapped)
    return cls


# -- ported public cores ------------------------------------------------------------------
# Each ports a skipped stdlib test to parallax's public API, keeping its assertions.


def _mul(x: int, y: int) -> int:
    return x * y


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _raise_123() -> None:
    raise RuntimeError(123)  # some comment


def _init_fail() -> None:
    time.sleep(0.1)  # let some futures be scheduled
    raise ValueError("error in initializer")


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_SCRIPT_HEAD = """\
import sys, time
import parallax

def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()
"""


class PortedTests:
    """Public cores of the skipped stdlib tests; ``mode`` is set per class."""

    mode: ClassVar[str]

    def executor(self, **kwargs: Any) -> parallax.Executor:
        return parallax.Executor(self.mode, **kwargs)

    def setUp(self) -> None:
        # (multiprocessing's resource tracker may be a child already: see resource_tracker)
        self.children_before = child_pids()

    def no_workers_left(self) -> bool:
        return not parallax_threads() and not (child_pids() - self.children_before)

    def run_script(self, body: str) -> tuple[int, str, str]:
        script = _SCRIPT_HEAD + textwrap.dedent(body).format(mode=self.mode)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              timeout=60, check=False)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    # ExecutorTest.test_saturation: never more workers than asked for
    def test_saturation(self) -> None:
        with self.executor(workers=4) as executor:
            fs = [executor.submit(_pid_after, 0.01) for _ in range(15 * 4)]
            if self.mode == "thread":
                # one interpreter: count the running calls instead of the pids
                running = 0
                peak = 0
                lock = threading.Lock()

                def hold(_: int) -> None:
                    nonlocal running, peak
                    with lock:
                        running += 1
                        peak = max(peak, running)
                    time.sleep(0.01)
                    with lock:
                        running -= 1

                list(executor.map(hold, range(15 * 4)))
                assert peak <= 4
            assert len({f.result() for f in fs}) <= 4

    # ShutdownTest.test_threads_terminate / test_processes_terminate
    def test_threads_terminate(self) -> None:
        if self.mode != "thread":
            self.skipTest("a threading.Semaphore cannot reach a process worker")
        sem = threading.Semaphore(0)
        executor = self.executor(workers=5)
        fs = [executor.submit(sem.acquire) for _ in range(3)]
        for _ in range(3):
            sem.release()
        executor.shutdown()
        assert all(f.result() for f in fs)
        assert wait_until(self.no_workers_left)

    # ShutdownTest.test_context_manager_shutdown
    def test_context_manager_shutdown(self) -> None:
        with self.executor(workers=5) as executor:
            assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        assert wait_until(self.no_workers_left)

    # ShutdownTest.test_del_shutdown
    def test_del_shutdown(self) -> None:
        executor = self.executor(workers=5)
        res = executor.map(abs, range(-5, 5))
        del executor
        gc.collect()
        # Make sure the results were all computed before the executor got shutdown.
        assert all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True))
        del res
        gc.collect()
        assert wait_until(self.no_workers_left)

    # ShutdownTest.test_shutdown_no_wait
    def test_shutdown_no_wait(self) -> None:
        executor = self.executor(workers=5)
        res = executor.map(abs, range(-5, 5))
        executor.shutdown(wait=False)
        assert all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True))
        assert wait_until(self.no_workers_left)

    # ... over more items than the run reads ahead (DESIGN.md stage 2: results of a
    # map started before shutdown() are all delivered)
    def test_shutdown_no_wait_long(self) -> None:
        executor = self.executor(workers=5)
        res = executor.map(abs, range(-1000, 1000))
        executor.shutdown(wait=False)
        assert all(r == abs(v) for r, v in zip(res, range(-1000, 1000), strict=True))
        assert wait_until(self.no_workers_left)

    # ShutdownTest.test_interpreter_shutdown
    def test_interpreter_shutdown(self) -> None:
        rc, out, err = self.run_script("""
            if __name__ == "__main__":
                t = parallax.Executor({mode!r}, workers=5)
                t.submit(sleep_and_print, 1.0, "apple")
            """)
        assert rc == 0, err
        assert not err
        assert out.strip() == "apple"

    # ShutdownTest.test_submit_after_interpreter_shutdown
    def test_submit_after_interpreter_shutdown(self) -> None:
        rc, out, err = self.run_script("""
            import atexit
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            if __name__ == "__main__":
                t = parallax.Executor({mode!r}, workers=5)
                t.submit(id, 42).result()
            """)
        assert rc == 0, err
        assert "RuntimeError: cannot schedule new futures" in err
        assert out.strip() == "runtime-error"

    # ShutdownTest.test_hang_gh83386 (CPython skips it for processes; parallax need not)
    def test_hang_gh83386(self) -> None:
        rc, out, err = self.run_script("""
            if __name__ == "__main__":
                t = parallax.Executor({mode!r}, workers=3)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
            """)
        assert rc == 0, err
        assert not err
        assert out.strip() == "apple"

    # ThreadPoolShutdownTest.test_cancel_futures_wait_false
    def test_cancel_futures_wait_false(self) -> None:
        rc, out, err = self.run_script("""
            if __name__ == "__main__":
                t = parallax.Executor({mode!r})
                t.submit(sleep_and_print, .1, "apple")
                t.shutdown(wait=False, cancel_futures=True)
            """)
        assert rc == 0, err
        assert not err
        assert out.strip() in ["apple", ""]

    # FailingInitializerMixin.test_initializer
    def test_failing_initializer(self) -> None:
        with self.executor(workers=2, initializer=_init_fail) as executor:
            try:
                future = executor.submit(os.getpid)
            except BrokenExecutor:
                pass  # perhaps the executor is already broken
            else:
                with pytest.raises(BrokenExecutor):
                    future.result()
            # from this point submit() is guaranteed to fail
            with pytest.raises(BrokenExecutor):
                executor.submit(os.getpid)

    # ProcessPoolExecutorTest.test_max_tasks_per_child
    def test_max_tasks_per_worker(self) -> None:
        if self.mode != "process":
            self.skipTest("a process pool test: pids are the same for every thread")
        executor = self.executor(workers=1, max_tasks_per_worker=3)
        original_pid = executor.submit(os.getpid).result(timeout=10)
        # The worker pid remains the same as the worker could be reused
        assert executor.submit(os.getpid).result(timeout=10) == original_pid
        assert executor.submit(os.getpid).result(timeout=10) == original_pid
        # A new worker is spawned, with a statistically different pid,
        # while the previous was reaped.
        assert executor.submit(os.getpid).result(timeout=10) != original_pid
        executor.shutdown()

    # ProcessPoolExecutorTest.test_max_tasks_early_shutdown
    def test_max_tasks_early_shutdown(self) -> None:
        if self.mode != "process":
            self.skipTest("CPython runs it for process pools; in thread mode its outcome is a "
                          "race, made certain in test_max_tasks_shutdown_while_busy")
        executor = self.executor(workers=3, max_tasks_per_worker=1)
        futures = [executor.submit(_mul, i, i) for i in range(6)]
        executor.shutdown()
        for i, future in enumerate(futures):
            assert future.result(timeout=10) == _mul(i, i)

    # The same, with shutdown() called while every worker is still in its first
    # task: the stdlib's promise (all submitted work completes) must still hold.
    def test_max_tasks_shutdown_while_busy(self) -> None:
        if self.mode != "thread":
            self.skipTest("needs a threading.Event in the workers")
        release = threading.Event()
        executor = self.executor(workers=3, max_tasks_per_worker=1)
        first = [executor.submit(release.wait) for _ in range(3)]
        rest = [executor.submit(_mul, i, i) for i in range(3)]
        closing = threading.Thread(target=executor.shutdown)
        closing.start()
        assert wait_until(lambda: "closed" in repr(executor))
        release.set()
        closing.join()
        assert all(future.result(timeout=10) for future in first)
        for i, future in enumerate(rest):
            assert future.result(timeout=10) == _mul(i, i)

    # ProcessPoolExecutorTest.test_killed_child: a dead worker's future is broken.
    # (The stdlib also breaks the whole pool; parallax's contract heals it instead.)
    def test_killed_child(self) -> None:
        if self.mode != "process":
            self.skipTest("only a process worker can be killed")
        with self.executor(workers=2) as executor:
            future = executor.submit(_kill_self)
            with pytest.raises(BrokenProcessPool):
                future.result()

    # ProcessPoolExecutorTest.test_traceback, without the private _RemoteTraceback
    def test_traceback(self) -> None:
        with self.executor(workers=2) as executor:
            future = executor.submit(_raise_123)
            with pytest.raises(Exception) as info:  # noqa: PT011 - the test checks the type
                future.result()
        exc = info.value
        assert type(exc) is RuntimeError
        assert exc.args == (123,)
        assert "raise RuntimeError(123)  # some comment" in str(exc.__cause__)

    # ExecutorDeadlockTest.test_shutdown_deadlock_pickle
    def test_shutdown_deadlock_pickle(self) -> None:
        if self.mode != "process":
            self.skipTest("nothing is pickled in thread mode")
        error_at_pickle = STDLIB["test_deadlock"].ErrorAtPickle
        with self.executor(workers=2) as executor:
            executor.submit(id, 42).result()
            f = executor.submit(id, error_at_pickle())
            executor.shutdown(wait=False)
            with pytest.raises(pickle.PicklingError):
                f.result()
        assert wait_until(self.no_workers_left)

    # ThreadPoolExecutorTest.test_map_submits_without_iteration, made deterministic:
    # the first call blocks, so the iterator is dropped before any chunk finished.
    def test_map_submits_without_iteration_blocked(self) -> None:
        if self.mode != "thread":
            self.skipTest("records calls in a list the workers share")
        release = threading.Event()
        finished: list[int] = []

        def record_finished(n: int) -> None:
            if n == 0:
                release.wait(10)
            finished.append(n)

        executor = self.executor(workers=2)
        executor.map(record_finished, range(10))
        gc.collect()
        release.set()
        executor.shutdown(wait=True)
        assert sorted(finished) == list(range(10))

    # ExecutorTest.test_no_stale_references, for the future's own callable
    def test_done_future_does_not_keep_callable(self) -> None:
        class Target:
            def method(self) -> None:
                pass

        target = Target()
        ref = weakref.ref(target)
        with self.executor(workers=2) as executor:
            future = executor.submit(target.method)
            future.result()
            del target
            gc.collect()
            assert ref() is None


# -- the classes pytest collects ----------------------------------------------------------


def _suites() -> dict[str, tuple[type, ...]]:
    util = STDLIB["util"]
    base = util.BaseTestCase
    mixins = executor_mixins(util)
    thread, process = mixins["thread"], mixins["process"]
    tp, pp = STDLIB["test_thread_pool"], STDLIB["test_process_pool"]
    wait, ac = STDLIB["test_wait"], STDLIB["test_as_completed"]
    sd, init, dl = STDLIB["test_shutdown"], STDLIB["test_init"], STDLIB["test_deadlock"]

    class PortedThread(PortedTests, unittest.TestCase):
        mode = "thread"

    class PortedProcess(PortedTests, unittest.TestCase):
        mode = "process"

    return {
        # thread mode: the stdlib's ThreadPool* classes with parallax's type
        "ThreadExecutorTest": (thread, tp.ThreadPoolExecutorTest),
        "ThreadWaitTest": (thread, wait.ThreadPoolWaitTests),
        "ThreadAsCompletedTest": (ac.AsCompletedTests, thread, base),
        "ThreadShutdownTest": (thread, sd.ThreadPoolShutdownTest),
        "ThreadInitializerTest": (init.InitializerMixin, thread, base),
        "ThreadFailingInitializerTest": (init.FailingInitializerMixin, thread, base),
        "PortedThreadTest": (PortedThread,),
        # process mode: the ProcessPool* mixins with parallax's type
        "ProcessExecutorTest": (pp.ProcessPoolExecutorTest, process, base),
        "ProcessWaitTest": (wait.WaitTests, process, base),
        "ProcessAsCompletedTest": (ac.AsCompletedTests, process, base),
        "ProcessShutdownTest": (sd.ProcessPoolShutdownTest, process, base),
        "ProcessInitializerTest": (init.InitializerMixin, process, base),
        "ProcessFailingInitializerTest": (init.FailingInitializerMixin, process, base),
        "ProcessDeadlockTest": (dl.ExecutorDeadlockTest, process, base),
        "PortedProcessTest": (PortedProcess,),
    }


if STDLIB:
    for _name, _bases in _suites().items():
        globals()[_name] = _build(_name, _bases)


def test_tables_name_real_tests() -> None:
    """Every entry of the three tables names a collected test (no stale entries)."""
    if not STDLIB:
        pytest.skip(MISSING)
    existing = {
        f"{name}::{attr}"
        for name in _suites()
        for attr in dir(globals()[name])
        if attr.startswith("test")
    }
    tables = (SKIPS, KNOWN_FAILURES, HANGS, FLAKY)
    for table in tables:
        assert set(table) <= existing, set(table) - existing
    listed = [key for table in tables for key in table]
    assert len(listed) == len(set(listed)), "a test is in two tables"
