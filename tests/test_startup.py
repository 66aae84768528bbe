"""A script's first call loads only what it needs (issue #17).

Speed lives in ``benchmarks/bench_startup.py``; this checks the cause of a
slow first call instead: which modules it imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import parallax

#: modules a first auto ``map`` of a few small items does not need: each
#: costs milliseconds to import (``dataclasses`` brings ``inspect``, ``ast``,
#: ``dis``, ``tokenize``; ``concurrent.futures`` brings ``logging``;
#: ``sysconfig`` reads the build's configuration, about 1 ms, to tell what
#: ``sys._is_gil_enabled`` says on 3.13+ and no earlier build can differ on)
HEAVY = [
    "typing_extensions", "dataclasses", "inspect", "logging", "concurrent.futures",
    "multiprocessing", "asyncio", "socket", "json", "pathlib", "random", "cloudpickle",
    "sysconfig",
    "parallax._stats", "parallax._progress", "parallax._executor", "parallax._cli",
    "parallax._broken", "parallax._protocol", "parallax.backends._thread",
    "parallax.backends._process",
]


def loaded_by(script: str) -> list[str]:
    """The modules of HEAVY that ``script`` loads, in a fresh interpreter."""
    # Listed before json is imported to print them.
    probe = (f"{script}\nimport sys\nfound = [n for n in {HEAVY!r} if n in sys.modules]\n"
             "import json\nprint(json.dumps(found))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_a_first_auto_map_loads_no_heavy_module() -> None:
    # f is defined in the script, as in a script: a by-value function, which
    # only cloudpickle could check for pickling (not needed to run serially).
    # The first item's watch is pinned: a machine that stalls the caller for
    # 2 ms (a busy disk under page faults, another thread holding the GIL)
    # makes the tiny first item look like waiting, and the thread backend
    # then loads rightly; this checks the path of an item that does not wait.
    script = (
        "import parallax\n"
        "import parallax._auto\n"
        "parallax._auto.WATCH_AFTER = 3600.0\n"
        "def f(x):\n"
        "    return x * 2\n"
        "assert parallax.map(f, range(10)) == list(range(0, 20, 2))\n"
        "assert parallax.map(abs, [-1, 2]) == [1, 2]\n"
    )
    assert loaded_by(script) == []


def test_import_parallax_loads_nothing_but_the_package() -> None:
    assert loaded_by("import parallax") == []


@pytest.mark.parametrize(("mode", "needed"), [("thread", "concurrent.futures"),
                                              ("process", "parallax.backends._process")])
def test_a_pool_loads_what_it_needs_and_not_the_stats_views(mode: str, needed: str) -> None:
    # A cold pool's time starts with these imports, before any worker is
    # asked for: concurrent.futures (and its logging) an Executor must have,
    # typing's ParamSpec needs no typing_extensions, and the stats views
    # (json, pathlib, the Stats dataclasses) wait until stats are read.
    script = (
        "import parallax\n"
        f"with parallax.Executor({mode!r}, workers=1) as pool:\n"
        "    assert pool.submit(abs, -3).result() == 3\n"
        "    assert list(pool.map(abs, [-1, 2])) == [1, 2]\n"
    )
    loaded = loaded_by(script)
    assert needed in loaded  # (the check sees what it loads)
    assert not {"typing_extensions", "json", "pathlib", "parallax._stats"} & set(loaded)


def test_the_lazy_names_are_still_there() -> None:
    script = (
        "import parallax\n"
        "from parallax import Executor, WorkerCrashedError, Stats, monitor, Plan\n"
        "from concurrent.futures import BrokenExecutor\n"
        "assert issubclass(WorkerCrashedError, BrokenExecutor)\n"
        "with parallax.monitor() as mon:\n"
        "    parallax.map(abs, [-1, 2])\n"
        "assert isinstance(mon.runs[0], Stats), mon.runs\n"
    )
    # Asking for them loads them, and their modules (that is the point).
    assert "parallax._stats" in loaded_by(script)


# -- I/O auto: the probe's first item does not run alone --------------------------------


def test_waiting_first_item_lets_the_rest_start_meanwhile_in_the_callers_thread() -> None:
    # The probe's first item waits until another item runs: it only returns
    # if auto started the rest while it waited (no clock involved).
    caller = threading.current_thread()
    others_ran = threading.Event()

    def work(x: int) -> tuple[int, bool]:
        if x == 0:
            assert others_ran.wait(60), "nothing else started while the first item waited"
        else:
            others_ran.set()
        return x, threading.current_thread() is caller

    with parallax.monitor() as mon:
        results = parallax.map(work, range(40))
    assert [x for x, _ in results] == list(range(40))
    assert results[0][1]  # the probed item ran in the caller's thread
    assert not all(in_caller for _, in_caller in results[1:])
    stats = mon.runs[0]
    assert stats.mode == "thread"
    assert "into the first item, which was waiting" in stats.reason
    assert stats.tasks == 40


def test_a_failing_waiting_first_item_raises_after_the_rest_started() -> None:
    others_ran = threading.Event()

    def work(x: int) -> int:
        if x == 0:
            assert others_ran.wait(60)
            raise ValueError("first")
        others_ran.set()
        return x

    with pytest.raises(ValueError, match="first"):
        parallax.map(work, range(40))
    assert parallax.map(work, range(1, 5)) == [1, 2, 3, 4]  # nothing left behind


def test_a_waiting_first_item_of_unpicklable_work_gets_its_note() -> None:
    lock = threading.Lock()
    others_ran = threading.Event()

    def work(x: int) -> int:
        with lock:
            pass
        if x == 0:
            assert others_ran.wait(60)
        else:
            others_ran.set()
        return x

    with parallax.monitor() as mon:
        assert parallax.map(work, range(40)) == list(range(40))
    assert "note: the function " in mon.runs[0].reason
    assert "cannot be pickled" in mon.runs[0].reason
