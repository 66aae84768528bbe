"""A worker's traceback of a function sent by value names the caller's file and line.

Functions defined in a script's ``__main__`` travel to process and dask workers
by value (cloudpickle); the worker's traceback still shows the script's path,
each frame's line and its source line, as the same error in the caller would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import HAVE_DISTRIBUTED
from parallax._errors import CannotUnpickleError
from parallax._serialize import dumps, load_code, loads

#: a user's script: a top-level function calling a helper, a nested function
#: and a lambda, all defined in __main__; ``# frame:`` names each failing line
SCRIPT = '''\
import json, sys, traceback

import parallax


def helper(x):
    def nested(y):
        check = lambda z: 1 / z  # frame: lambda
        return check(y - y)  # frame: nested
    return nested(x)  # frame: helper


def task(x):
    return helper(x) + 1  # frame: task


if __name__ == "__main__":
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    try:
        parallax.map(task, [3], mode=mode, **options)
    except ZeroDivisionError as exc:
        print("".join(traceback.format_exception(exc.__cause__)))
    else:
        sys.exit("no error")
'''


def frames(script: Path) -> dict[str, int]:
    """Each ``# frame: NAME`` marker of the script, by name: its line number."""
    lines = script.read_text().splitlines()
    return {line.split("# frame: ")[1]: number
            for number, line in enumerate(lines, start=1) if "# frame: " in line}


@pytest.fixture(params=["process", pytest.param("dask", marks=pytest.mark.dask)])
def sent_by_value(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """A mode whose workers get ``__main__`` functions by value, and its options."""
    if request.param == "dask":
        if not HAVE_DISTRIBUTED:
            pytest.skip("dask mode needs the 'distributed' package")
        cluster = request.getfixturevalue("dask_cluster")
        return "dask", {"address": str(cluster.scheduler_address)}
    return request.param, {}


def test_a_main_functions_traceback_names_the_script_and_its_lines(
    tmp_path: Path, sent_by_value: tuple[str, dict[str, Any]]
) -> None:
    mode, options = sent_by_value
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), mode, json.dumps(options)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr
    shown = done.stdout
    assert "<dynamic-code>" not in shown
    source = script.read_text().splitlines()
    for name, line in frames(script).items():
        function = "<lambda>" if name == "lambda" else name
        assert f'File "{script}", line {line}, in {function}\n' in shown, shown
        assert f"\n    {source[line - 1].strip()}\n" in shown, shown  # the source line


def test_functions_sent_by_value_keep_closures_defaults_and_recursion() -> None:
    # cloudpickle's guarantees hold with the code objects marshalled.
    base = 10

    def add(x: int, extra: int = 5) -> int:
        return x + base + extra

    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial(n - 1)

    copied_add, copied_factorial = loads(dumps((add, factorial)))
    assert copied_add(1) == 16
    assert copied_factorial(5) == 120
    assert copied_add.__code__.co_filename == __file__


def test_code_marshal_refuses_travels_as_cloudpickle_sends_it() -> None:
    def seven() -> object:
        return 7

    code = seven.__code__
    # a constant marshal cannot write, put there by hand
    consts = tuple(Decimal(7) if const == 7 else const for const in code.co_consts)
    seven.__code__ = code.replace(co_consts=consts)
    copied = loads(dumps(seven))
    assert copied() == Decimal(7)
    assert copied.__code__.co_filename == "<dynamic-code>"  # cloudpickle's way


def test_code_marshalled_by_another_interpreter_is_refused() -> None:
    with pytest.raises(CannotUnpickleError, match=r"cpython-299 .* caller's Python version"):
        load_code("cpython-299", b"")
