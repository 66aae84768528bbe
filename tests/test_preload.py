"""``preload=``: modules every process worker imports before its first task.

With the fork template they are imported once, in a template of the pool's
own, before it forks any worker: every worker, a replaced one too, finds them
imported and shares their pages. With fresh interpreters each worker imports
them itself. Either way a bad name fails before any work, and a module that
raises on import breaks the pool with the import's error.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import parallax
from parallax import _template

needs_template = pytest.mark.skipif(not _template.SUPPORTED,
                                    reason="the fork template needs Linux")

START_METHODS = [pytest.param("template", marks=needs_template), "fresh"]


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """A module of a name of its own, importable here and in the workers,
    whose import writes the importing process's pid to ``imports.log``."""
    name = f"preload_probe_{uuid.uuid4().hex[:12]}"
    log = tmp_path / "imports.log"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import os
        with open({str(log)!r}, "a") as log:
            log.write(f"{{os.getpid()}}\\n")

        """) + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _importers(tmp_path: Path) -> list[int]:
    log = tmp_path / "imports.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _where(_: int) -> tuple[int, int]:
    """The worker's pid and its parent's."""
    return os.getpid(), os.getppid()


@needs_template
def test_the_template_imports_them_once_for_every_worker_replacements_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _module(tmp_path, monkeypatch, "")
    # One task per worker: six workers in turn, four of them replacements.
    with parallax.Executor("process", workers=2, max_tasks_per_worker=1, preload=name,
                           start_method="template") as executor:
        seen = list(executor.map(_where, range(6), chunksize=1))
    assert len({pid for pid, _ in seen}) == 6
    (template,) = {parent for _, parent in seen}  # forked by one template...
    assert template in _template.running_pids()
    assert template != _template.running_pid()  # ...of its own, not the shared one
    assert _importers(tmp_path) == [template]  # which alone ran the import
    assert name not in sys.modules  # (the caller never imported it)


@needs_template
def test_pools_with_the_same_preload_share_its_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _module(tmp_path, monkeypatch, "")
    parents = set()
    for _ in range(2):
        with parallax.Executor("process", workers=1, preload=[name],
                               start_method="template") as executor:
            parents |= {parent for _, parent in executor.map(_where, range(2))}
    assert len(parents) == 1
    assert _importers(tmp_path) == list(parents)


def test_calls_naming_the_same_modules_in_a_new_list_share_a_pool() -> None:
    # The pool's key holds the names, not the list: no pool per call.
    first = set(parallax.map(_where, range(8), mode="process", preload=["json"], chunksize=1))
    again = set(parallax.map(_where, range(8), mode="process", preload=["json"], chunksize=1))
    assert {pid for pid, _ in first} & {pid for pid, _ in again}


@pytest.mark.parametrize("start_method", START_METHODS)
def test_every_worker_has_them_imported_before_its_first_task(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _module(tmp_path, monkeypatch, "")

    def probe(_: int) -> tuple[int, bool]:
        return os.getpid(), name in sys.modules

    with parallax.Executor("process", workers=2, preload=(name,),
                           start_method=start_method) as executor:
        seen = set(executor.map(probe, range(20), chunksize=1))
    assert all(imported for _, imported in seen)
    if start_method == "fresh":  # each imported it itself
        assert set(_importers(tmp_path)) == {pid for pid, _ in seen}


@pytest.mark.parametrize(
    ("preload", "error", "words"),
    [
        (3, TypeError, "preload must be a module name or names"),
        ([3], TypeError, "preload must be a module name or names"),
        ("", TypeError, "preload must be a module name or names"),
        ("json..decoder", TypeError, "such as preload=('numpy', 'mypackage.model')"),
        ("no_such_module_here", ValueError, "there is no module named 'no_such_module_here'"),
        (["json", "no_such_pkg.sub"], ValueError, "no module named 'no_such_pkg'"),
    ],
)
def test_a_bad_preload_is_refused_before_any_work(preload: object, error: type[Exception],
                                                  words: str) -> None:
    ran = []
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        parallax.map(ran.append, [1], mode="process", preload=preload)
    assert ran == []


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_module_that_raises_on_import_breaks_the_pool_with_its_error(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _module(tmp_path, monkeypatch, 'raise RuntimeError("no database here")\n')
    with (parallax.Executor("process", workers=1, preload=name,
                            start_method=start_method) as executor,
          pytest.raises(BrokenProcessPool) as caught):
        executor.submit(abs, -1).result(timeout=60)
    message = str(caught.value)
    assert f"import of preload=('{name}',) failed with RuntimeError: no database here" in message


@needs_template
def test_a_module_that_leaves_a_thread_running_gets_no_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fork copies one thread: the template would hand its workers the locks
    # the other thread held. The pool says so; fresh workers can import it.
    name = _module(tmp_path, monkeypatch, """
        import threading, time
        threading.Thread(target=time.sleep, args=(3600,), name="sleeper", daemon=True).start()
        """)
    with (parallax.Executor("process", workers=1, preload=name,
                            start_method="template") as executor,
          pytest.raises(BrokenProcessPool,
                        match=r"left 1 thread\(s\) running in the fork template \(sleeper\)")):
        executor.submit(abs, -1).result(timeout=60)
    with parallax.Executor("process", workers=1, preload=name,
                           start_method="fresh") as executor:
        assert executor.submit(abs, -1).result(timeout=60) == 1


@needs_template
def test_a_module_that_ends_the_template_breaks_the_pool_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _module(tmp_path, monkeypatch, "os._exit(3)\n")
    with (parallax.Executor("process", workers=1, preload=name,
                            start_method="template") as executor,
          pytest.raises(BrokenProcessPool, match=r"the fork template exited with code 3 "
                        r"before it answered, twice; it imports preload=\(")):
        executor.submit(abs, -1).result(timeout=60)
    assert len(_importers(tmp_path)) == 2  # the template, and its one replacement


@needs_template
def test_workers_of_a_template_that_preloaded_numpy_draw_different_numbers() -> None:
    pytest.importorskip("numpy")

    def draw(_: int) -> tuple[int, float]:
        import numpy

        return os.getpid(), float(numpy.random.random())

    with parallax.Executor("process", workers=2, preload="numpy.random",
                           start_method="template") as executor:
        first_draws: dict[int, float] = {}  # each worker's first number
        for _ in range(50):  # until both workers answered
            for pid, value in executor.map(draw, range(4), chunksize=1):
                first_draws.setdefault(pid, value)
            if len(first_draws) == 2:
                break
    assert len(first_draws) == 2
    first, second = first_draws.values()
    assert first != second  # (one stream, copied at the fork, would give equal ones)
