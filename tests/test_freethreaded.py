"""Free-threaded mode, and the GIL detection behind the auto-selector."""

from __future__ import annotations

import sys
import sysconfig

import pytest

import parallax
from helpers import spin
from parallax import _host
from parallax.backends import _freethreaded


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
