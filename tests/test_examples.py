"""Every script in ``examples/`` runs to completion and prints what it promises.

Each example is run as a user would (``python examples/NAME.py``) in a
subprocess. The scripts assert their own results; these tests also check
their output, and that each one is a proper script (a docstring saying what
it shows, a ``__main__`` guard so process workers could import it safely).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))

#: lines (or parts of lines) each known example must print
EXPECTED_OUTPUT: dict[str, list[str]] = {
    "quickstart.py": [
        "plan for count_primes:",
        "serial, thread and process all returned",
        "auto ran slow_square as 'thread'",
        "imap over an endless generator: first 50 squares sum to 40425",
        "starmap(power, [(2, 10), (3, 5), (10, 3)]) = [1024, 243, 1000]",
        "ordered=False returned",
    ],
    "decorator_and_tests.py": [
        "score.map over 16 documents: [400, 0, 200, 200] ...",
        "runs: ['process', 'thread']",
        "score.submit(...) -> Future, result 200",
        "test_score_map_matches_plain_calls: passed",
        "test_score_is_still_a_function: passed",
    ],
    "executor.py": [
        "thread executor, as_completed order:",
        "process executor, map (input order):",
        "submit(checksum, 8).result() =",
        "stats of its map/imap runs: 16 tasks on 2 workers",
    ],
    "fetch_local.py": [
        "plan: thread (I/O-bound",
        "auto: 120 pages in",
        "as 'thread'",
        "errors='return': 8 pages, 2 HTTPError 404s in place of ['/missing', '/nope']",
    ],
    "errors_and_timeouts.py": [
        "raise:  ValueError(no '=' in 'oops') -- parallax: raised by item 2 ('oops')",
        "cause: WorkerTraceback",
        "return: [1, 2, 'ValueError', 4, 'ValueError', 6]",
        "skip:   [1, 2, 4, 6]",
        "job 3: TaskTimeoutError:",
        "job 5: WorkerCrashedError:",
        "exited with code 7",
        "the other 6 jobs succeeded: [0, 10, 20, 40, 60, 70]",
    ],
    "worker_logging.py": [
        "INFO    shop.orders [parallax-process-",
        "WARNING shop.orders [parallax-process-",
        "forwarded: 8 prices, total 360",
        "with shop at WARNING: only the warnings above came back",
        "forward_logs=False: 100",
    ],
    "worker_resources.py": [
        "thread: 100 squares returned, 100 rows stored (sum 328350)",
        "process: 100 squares returned, 100 rows stored (sum 328350)",
    ],
}


def test_there_are_examples() -> None:
    assert 3 <= len(EXAMPLES) <= 8, [path.name for path in EXAMPLES]
    assert set(EXPECTED_OUTPUT) <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_is_a_documented_guarded_script(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.splitlines()) >= 3, f"{path.name} needs a docstring"
    guards = [
        node for node in tree.body
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
        and "__main__" in ast.unparse(node.test)
    ]
    assert guards, f"{path.name} must run its code under `if __name__ == '__main__':`"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs(path: Path, tmp_path: Path) -> None:
    # PARALLAX_MODE would force every call's mode and change what the examples print.
    environment = {key: value for key, value in os.environ.items() if key != "PARALLAX_MODE"}
    result = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment, check=False,
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), f"{path.name} printed nothing"
    for expected in EXPECTED_OUTPUT.get(path.name, []):
        assert expected in result.stdout, f"{expected!r} not in the output of {path.name}"
