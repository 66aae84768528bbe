"""Free-threaded mode, and the GIL detection behind the auto-selector."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import warnings

import pytest

import parallax
from helpers import spin
from parallax import _host
from parallax.backends import _freethreaded

#: the tests that only a free-threaded interpreter (3.13t) can run for real
free_threaded_build = pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="needs a free-threaded build (3.13t)"
)


def test_runs_on_threads_and_returns_correct_results() -> None:
    assert parallax.map(spin, range(50), mode="free-threaded") == [spin(n) for n in range(50)]


def test_default_workers_are_the_usable_cpus() -> None:
    with parallax.Executor("free-threaded") as executor:
        assert executor.workers == parallax.backends.usable_cpus()


@pytest.mark.skipif(not _host.gil_enabled(), reason="only a GIL build warns")
def test_warns_once_on_a_gil_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_freethreaded, "_warned", False)
    executors = []
    with pytest.warns(RuntimeWarning, match="no CPU parallelism") as record:
        executors.extend(parallax.Executor("free-threaded") for _ in range(2))
    for executor in executors:
        executor.shutdown()
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller, not at parallax


def test_gil_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert _host.gil_enabled() is False
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 1)
    assert _host.gil_enabled() is False
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0)
    assert _host.gil_enabled() is True


def test_auto_picks_free_threaded_when_the_gil_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_host, "gil_enabled", lambda: False)
    monkeypatch.setattr(_host, "usable_cpus", lambda: 4)
    plan = parallax.plan(lambda x: spin(300_000), range(20))
    assert plan.mode == "free-threaded"
    assert "GIL disabled" in plan.reason


# -- on a real free-threaded build ---------------------------------------------------------


@free_threaded_build
def test_auto_picks_free_threaded_on_this_build(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GIL state is the interpreter's own here; only a second core is pinned.
    monkeypatch.setattr(_host, "usable_cpus", lambda: 2)
    plan = parallax.plan(lambda x: spin(300_000), range(20))
    assert plan.mode == "free-threaded", plan.reason
    assert "GIL disabled" in plan.reason


@free_threaded_build
def test_no_warning_without_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_freethreaded, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parallax.map(spin, range(8), mode="free-threaded") == [spin(n) for n in range(8)]


@free_threaded_build
def test_the_gil_stays_off_through_every_local_mode() -> None:
    """Nothing parallax imports turns the GIL back on.

    An extension module that does not declare free-threading support would,
    silently but for a RuntimeWarning, and every mode would then run with it.
    In a fresh interpreter: this session's other imports must not mask it.
    """
    code = textwrap.dedent("""
        import sys
        import parallax

        async def negate(x):
            return -x

        for mode in ("serial", "thread", "process", "free-threaded"):
            assert parallax.map(abs, range(-20, 20), mode=mode) == [abs(x) for x in range(-20, 20)]
        assert parallax.map(negate, range(5), mode="asyncio") == [0, -1, -2, -3, -4]
        assert parallax.map(abs, range(-500, 500)) == [abs(x) for x in range(-500, 500)]
        print(sys._is_gil_enabled())
    """)
    environment = {name: value for name, value in os.environ.items() if name != "PYTHON_GIL"}
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True, text=True, timeout=60, env=environment, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
