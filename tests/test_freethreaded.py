"""Free-threaded mode, and the GIL detection behind the auto-selector."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import time
import warnings
from typing import Any

import pytest

import parallax
from helpers import spin
from parallax import _auto, _host
from parallax._auto import Facts, Probe, _overlap_speedup, decide
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
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True)
    assert _host.gil_enabled() is True
    monkeypatch.delattr(sys, "_is_gil_enabled")

    def unread(name: str) -> object:
        raise AssertionError(f"the build's configuration was read ({name})")

    # Before 3.13 no build runs without the GIL: the configuration is not read.
    monkeypatch.setattr(sysconfig, "get_config_var", unread)
    monkeypatch.setattr(sys, "version_info", (3, 12, 9, "final", 0))
    assert _host.gil_enabled() is True
    # A newer interpreter that cannot say: its build does.
    monkeypatch.setattr(sys, "version_info", (3, 14, 0, "final", 0))
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 1)
    assert _host.gil_enabled() is False
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0)
    assert _host.gil_enabled() is True


def pin_overlap(monkeypatch: pytest.MonkeyPatch, speedup: float) -> list[Facts]:
    """No GIL, 4 CPUs, and two threads measured at ``speedup`` x one; the facts
    the measurement was asked for are recorded."""
    asked: list[Facts] = []

    def measured(fn: Any, result: Probe, facts: Facts, source: Any) -> Facts:
        asked.append(facts)
        return facts.replace(thread_speedup=speedup)

    monkeypatch.setattr(_host, "gil_enabled", lambda: False)
    monkeypatch.setattr(_host, "usable_cpus", lambda: 4)
    monkeypatch.setattr(_auto, "_thread_overlap", measured)
    return asked


def test_auto_picks_free_threaded_when_the_gil_is_off_and_threads_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = pin_overlap(monkeypatch, 1.9)
    plan = parallax.plan(lambda x: spin(300_000), range(20))
    assert len(asked) == 1  # measured before free-threaded was chosen
    assert plan.mode == "free-threaded"
    assert "GIL disabled" in plan.reason
    assert "2 threads: 1.9x -> free-threaded" in plan.reason


def test_auto_falls_back_to_process_when_threads_do_not_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = pin_overlap(monkeypatch, 0.6)
    plan = parallax.plan(spin_item, range(20))
    assert len(asked) == 1
    assert plan.mode == "process", plan.reason
    assert "GIL disabled" in plan.reason and "2 threads: 0.6x -> process" in plan.reason
    with parallax.monitor() as monitor:
        assert parallax.map(spin_item, range(20)) == [spin(300_000)] * 20
    assert monitor.runs[-1].mode == "process"
    assert "2 threads: 0.6x -> process" in monitor.runs[-1].reason


def test_overlap_is_not_measured_for_work_that_is_not_cpu_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = pin_overlap(monkeypatch, 0.6)
    assert parallax.plan(lambda x: x, range(10)).mode == "serial"
    assert parallax.plan(lambda x: time.sleep(0.02), range(10)).mode == "thread"
    assert asked == []


def spin_item(_: int) -> int:
    return spin(300_000)


def test_the_overlap_measurement_decides_between_free_threads_and_processes() -> None:
    """``decide`` stays pure: the measurement is a fact."""
    facts = Facts(probed=5, item_wall=0.02, item_cpu=0.0199, total=100, cpus=2,
                  gil_enabled=False)
    assert decide(facts).mode == "free-threaded"  # not measured (few items left, Executor)
    # Free threads must overlap nearly as well as processes would: at 1.3-1.4x
    # (threads contending on shared objects) processes win.
    for speedup, mode in ((1.9, "free-threaded"), (1.6, "free-threaded"), (1.4, "process"),
                          (1.1, "process"), (0.6, "process")):
        plan = decide(facts.replace(thread_speedup=speedup))
        assert plan.mode == mode
        assert f"2 threads: {speedup:.2g}x -> {mode}" in plan.reason
    unpicklable = facts.replace(thread_speedup=0.6, picklable=False,
                                unpicklable="the function f")
    assert decide(unpicklable).mode == "serial"
    # Threads that overlap somewhat still beat serial when a process is no option.
    some_overlap = decide(unpicklable.replace(thread_speedup=1.4))
    assert some_overlap.mode == "free-threaded"
    assert "the function f cannot be pickled" in some_overlap.reason


def test_the_payload_rule_picks_free_threads_without_the_gil() -> None:
    heavy = Facts(probed=5, item_wall=0.005, item_cpu=0.005, total=100, cpus=2,
                  gil_enabled=False, item_bytes=8_000_000, thread_speedup=1.4)
    plan = decide(heavy)
    assert plan.mode == "free-threaded", plan.reason
    assert "payload-heavy" in plan.reason and "(GIL disabled) -> free-threaded" in plan.reason
    assert decide(heavy.replace(thread_speedup=1.0)).mode == "serial"


def test_waiting_for_a_cpu_is_taken_out_of_the_overlap_measurement() -> None:
    """Two threads given one core by a busy machine take turns, each waiting
    for the other on the run queue: they still count as overlapping. The same
    turns not on the run queue (the GIL, a lock of the function's own) do not."""
    # 8 items of 5 ms each, 40 ms for both threads; each waited ~half of it for a CPU
    assert _overlap_speedup(8, 0.005, 0.040, [0.020, 0.020]) == pytest.approx(2.0)
    assert _overlap_speedup(8, 0.005, 0.040, [0.0, 0.0]) == pytest.approx(1.0)
    # really in parallel, on a free machine
    assert _overlap_speedup(8, 0.005, 0.020, [0.0, 0.0]) == pytest.approx(2.0)
    # slower together than one alone (contended shared objects)
    assert _overlap_speedup(8, 0.005, 0.0667, [0.0, 0.0]) == pytest.approx(0.6, abs=0.01)


# -- on a real free-threaded build ---------------------------------------------------------


@free_threaded_build
def test_auto_picks_free_threaded_on_this_build(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GIL state is the interpreter's own here; a second core and the
    # overlap measurement are pinned (a busy machine must not decide the test).
    monkeypatch.setattr(_host, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_auto, "_thread_overlap",
                        lambda fn, result, facts, source: facts.replace(thread_speedup=1.9))
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
