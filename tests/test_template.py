"""The fork template (``parallax._template``): process workers forked from one
single-threaded process instead of started as fresh interpreters (#17).

The whole process-mode suite runs over the template (the default on Linux)
and, with ``PARALLAX_START_METHOD=fresh``, over fresh interpreters; these are
the template's own promises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import parallax
from conftest import wait_until
from helpers import process_alive
from parallax import _template

pytestmark = pytest.mark.skipif(not _template.SUPPORTED, reason="the fork template needs Linux")


def _pid(_: int) -> int:
    return os.getpid()


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[1])


def _exit_with(code: int) -> int:
    os._exit(code)


def _kill_self(signum: int) -> int:
    os.kill(os.getpid(), signum)
    return 0


def _worker_pids(executor: parallax.Executor, workers: int) -> set[int]:
    # Items that wait for each other would need a barrier; a few rounds of
    # quick items reach every worker of a 2-worker pool in practice, and the
    # assertions only need the ones seen.
    return set(executor.map(_pid, range(20 * workers), chunksize=1))


def test_the_template_is_started_once_and_serves_several_pools() -> None:
    with parallax.Executor("process", workers=2, start_method="template") as first:
        first_pids = _worker_pids(first, 2)
        template = _template.running_pid()
        assert template is not None
        assert all(_parent_of(pid) == template for pid in first_pids)  # forked by it
    with parallax.Executor("process", workers=2, start_method="template") as second:
        second_pids = _worker_pids(second, 2)
        assert _template.running_pid() == template  # the same template, still up
        assert all(_parent_of(pid) == template for pid in second_pids)
    assert not first_pids & second_pids


def test_fresh_workers_are_children_of_the_caller() -> None:
    with parallax.Executor("process", workers=1, start_method="fresh") as executor:
        (pid,) = set(executor.map(_pid, range(3)))
        assert _parent_of(pid) == os.getpid()


def test_a_killed_template_is_replaced() -> None:
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        (worker,) = set(executor.map(_pid, range(3)))
        template = _template.running_pid()
        assert template is not None
        os.kill(template, signal.SIGKILL)
        assert wait_until(lambda: not process_alive(worker))  # its workers die with it
        assert wait_until(lambda: _template.running_pid() != template)
        # The pool replaced its worker through a new template.
        (replacement,) = set(executor.map(_pid, range(3)))
        assert replacement != worker
        assert _template.running_pid() not in (None, template)
        assert _parent_of(replacement) == _template.running_pid()


def test_a_sigkilled_caller_leaves_no_template_and_no_worker(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        import parallax
        from parallax import _template

        def pid(_):
            return os.getpid()

        executor = parallax.Executor("process", workers=2, start_method="template")
        workers = set(executor.map(pid, range(40), chunksize=1))
        print(_template.running_pid(), *workers, flush=True)
        time.sleep(120)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout is not None
        pids = [int(word) for word in caller.stdout.readline().split()]
        assert len(pids) >= 2
        assert all(process_alive(pid) for pid in pids)
    finally:
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(timeout=30)
        if caller.stdout is not None:
            caller.stdout.close()
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), 30), [
        pid for pid in pids if process_alive(pid)
    ]


def test_a_forked_caller_starts_a_template_of_its_own() -> None:
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        executor.map(_pid, range(2))
    template = _template.running_pid()
    assert template is not None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        code = 1
        try:
            os.close(read_end)
            mine = _template.running_pid()  # not the parent's
            with parallax.Executor("process", workers=1, start_method="template") as pool:
                results = list(pool.map(abs, range(-3, 3)))
            own = _template.running_pid()
            ok = mine is None and own not in (None, template) and results == [3, 2, 1, 0, 1, 2]
            os.write(write_end, b"ok" if ok else repr((mine, own, results)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read()
        _, status = os.waitpid(child, 0)
    finally:
        if process_alive(child):
            os.kill(child, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == b"ok"
    assert _template.running_pid() == template  # the parent's is untouched, and works
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        assert list(executor.map(abs, [-1])) == [1]


@pytest.mark.parametrize("start_method", ["template", "fresh"])
@pytest.mark.parametrize(
    ("fn", "arg", "exitcode", "words"),
    [
        (_exit_with, 7, 7, "exited with code 7"),
        (_kill_self, signal.SIGSEGV, -signal.SIGSEGV, "was killed by SIGSEGV"),
        (_kill_self, signal.SIGKILL, -signal.SIGKILL, "was killed by SIGKILL (likely cause"),
    ],
)
def test_exit_statuses_and_signals_read_the_same_over_both_start_methods(
    start_method: str, fn: object, arg: int, exitcode: int, words: str,
) -> None:
    with parallax.Executor("process", workers=1, start_method=start_method) as executor:
        error = executor.submit(fn, arg).exception(timeout=60)  # type: ignore[arg-type]
        assert isinstance(error, parallax.WorkerCrashedError), error
        assert error.exitcode == exitcode
        assert words in str(error)
        assert "while running item 0" in str(error)
        assert executor.submit(_pid, 0).result(timeout=60) > 0  # replaced


def test_terminate_signals_template_workers_through_their_pidfd() -> None:
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        (pid,) = set(executor.map(_pid, range(2)))
        executor.terminate_workers()
        assert wait_until(lambda: not process_alive(pid))


@pytest.mark.parametrize("bad", ["spawn", "", 1])
def test_an_unknown_start_method_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="start_method must be 'template' or 'fresh'"):
        parallax.map(abs, [1], mode="process", start_method=bad)


def test_the_environment_knob_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallax.backends._process import default_start_method

    monkeypatch.setenv("PARALLAX_START_METHOD", "template")
    assert default_start_method() == "template"
    monkeypatch.setenv("PARALLAX_START_METHOD", "forkserver")
    with pytest.raises(ValueError, match="PARALLAX_START_METHOD must be"):
        default_start_method()
    monkeypatch.delenv("PARALLAX_START_METHOD")
    assert default_start_method() == "template"  # the default where it works


def test_template_workers_see_the_callers_cwd_and_environment(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def where(_: int) -> tuple[str, str | None]:
        return os.getcwd(), os.environ.get("PARALLAX_TEMPLATE_PROBE")

    with parallax.Executor("process", workers=1, start_method="template") as executor:
        executor.map(_pid, range(2))  # the template is up, started elsewhere
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARALLAX_TEMPLATE_PROBE", "seen")
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        cwd, probe = executor.submit(where, 0).result(timeout=60)
    assert os.path.samefile(cwd, tmp_path)
    assert probe == "seen"


def test_the_template_boots_ahead_only_for_a_pool_that_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Started before the process backend is imported (create_backend), for
    # the pools that fork from it, and for no other.
    booted: list[dict[str, str]] = []
    monkeypatch.setattr(_template, "_template", booted.append)
    monkeypatch.delenv("PARALLAX_START_METHOD", raising=False)
    _template.start_ahead("fresh")
    _template.start_ahead("forkserver")  # refused by the pool, not booted for
    monkeypatch.setenv("PARALLAX_START_METHOD", "fresh")
    _template.start_ahead(None)
    assert booted == []
    _template.start_ahead("template")
    monkeypatch.delenv("PARALLAX_START_METHOD")
    _template.start_ahead(None)  # the default
    assert len(booted) == 2
    assert booted[0]["PYTHONPATH"].split(os.pathsep)[0] == _template._PACKAGE_ROOT


def _collector_on(_: int) -> bool:
    import gc

    return gc.isenabled()


def test_template_workers_start_with_the_collector_on() -> None:
    # The template imports with the collector off: its workers get it back.
    with parallax.Executor("process", workers=1, start_method="template") as executor:
        assert executor.submit(_collector_on, 0).result(timeout=60) is True


CLOUDPICKLE_ON_DEMAND = textwrap.dedent("""
    import json, sys
    import parallax
    from helpers import has_cloudpickle  # importable: travels by reference

    def by_value(_):  # of __main__: travels by value (cloudpickle)
        return "cloudpickle" in sys.modules

    seen = []
    for fn in (has_cloudpickle, by_value, has_cloudpickle):
        with parallax.Executor("process", workers=2, start_method="template") as pool:
            seen.append(pool.submit(fn, 0).result(timeout=60))
    print(json.dumps(seen))
""")


def test_the_template_imports_cloudpickle_when_a_pool_sends_by_value() -> None:
    # A fresh caller, so a template that has not imported cloudpickle yet.
    # The first pool's function travels by reference: its workers never
    # import cloudpickle (4 MB and 12 ms saved). The second one's travels by
    # value: its workers wait for its first function, so the template knows
    # to import cloudpickle before it forks them. The third pool's workers,
    # forked after that, have it without loading anything by value: it is the
    # template's, shared.
    tests = os.path.dirname(os.path.abspath(__file__))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [tests, *filter(None, [os.environ.get("PYTHONPATH")])]))
    environment.pop("PARALLAX_START_METHOD", None)
    out = subprocess.run([sys.executable, "-c", CLOUDPICKLE_ON_DEMAND], check=False,
                         capture_output=True, text=True, env=environment, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[false, true, true]"


def test_the_template_holds_no_random_state_its_workers_would_share() -> None:
    # Every worker forked from it would draw the same numbers from a
    # generator the template had seeded: it never imports one (the guide
    # promises different streams per worker).
    script = (
        "import json, sys; from parallax._template import _prepare, _warm_up; "
        "_prepare(); _warm_up(); "
        "print(json.dumps([name for name in ('random', 'numpy', 'secrets') "
        "if name in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
