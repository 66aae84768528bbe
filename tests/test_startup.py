"""A script's first call loads only what it needs (issue #17).

Speed lives in ``benchmarks/bench_startup.py``; this checks the cause of a
slow first call instead: which modules it imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: modules a first auto ``map`` of a few small items does not need: each
#: costs milliseconds to import (``dataclasses`` brings ``inspect``, ``ast``,
#: ``dis``, ``tokenize``; ``concurrent.futures`` brings ``logging``)
HEAVY = [
    "typing_extensions", "dataclasses", "inspect", "logging", "concurrent.futures",
    "multiprocessing", "asyncio", "socket", "json", "pathlib", "random", "cloudpickle",
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
    script = (
        "import parallax\n"
        "def f(x):\n"
        "    return x * 2\n"
        "assert parallax.map(f, range(10)) == list(range(0, 20, 2))\n"
        "assert parallax.map(abs, [-1, 2]) == [1, 2]\n"
    )
    assert loaded_by(script) == []


def test_import_parallax_loads_nothing_but_the_package() -> None:
    assert loaded_by("import parallax") == []


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
