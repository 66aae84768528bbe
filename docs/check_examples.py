"""Run every Python code block of the docs, and compare printed output.

Usage, from the repository root::

    python docs/check_examples.py            # every page under docs/
    python docs/check_examples.py docs/guide.md

Rules:

* every fenced block whose info string is ``python`` runs as a script of its
  own (``python example.py`` in a fresh temporary directory, with
  ``PARALLAX_MODE`` removed from the environment), so each block must be
  complete: imports, definitions and a ``__main__``-safe body;
* a block whose first line is ``# file: NAME`` is not run: it is written to
  ``NAME`` in the temporary directory of the next block that runs (for
  modules a later block imports, or test files it runs with pytest);
* when a python block is followed by a line ``Output:`` and a ``text`` block,
  the script's standard output must match it line by line, where ``...``
  in the expected text matches any characters (timings, addresses);
* after a line ``Output (one run; numbers vary):`` the output is a real one
  pasted as is: the number of lines must match, and each line must match
  once numbers are masked, or at least start with the same word.

Exit code 0 when every block ran and matched, 1 otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FENCE = re.compile(r"^```(\w[\w-]*)?\s*$")


def blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, body, line number) of every fenced block, plus 'Output:' markers."""
    found: list[tuple[str, str, int]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        match = FENCE.match(line)
        if line.strip() == "Output:":
            found.append(("output-marker", "", index + 1))
        elif line.strip() == "Output (one run; numbers vary):":
            found.append(("loose-marker", "", index + 1))
        elif match:
            info = match.group(1) or ""
            body: list[str] = []
            start = index + 1
            index += 1
            while index < len(lines) and lines[index].rstrip() != "```":
                body.append(lines[index])
                index += 1
            found.append((info, "\n".join(body) + "\n", start))
        index += 1
    return found


def _loosely(expected: str, actual: str) -> bool:
    """Equal once numbers are masked, or at least starting with the same word."""
    number = re.compile(r"\d[\d,.]*")
    if number.sub("N", expected.strip()) == number.sub("N", actual.strip()):
        return True
    return expected.split()[:1] == actual.split()[:1]


def matches(expected: str, actual: str, *, loose: bool = False) -> bool:
    want = expected.rstrip("\n").splitlines()
    got = actual.rstrip("\n").splitlines()
    if len(want) != len(got):
        return False
    if loose:
        return all(_loosely(a, b) for a, b in zip(want, got, strict=True))
    for pattern, line in zip(want, got, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.rstrip().split("..."))
        if not re.fullmatch(regex, line.rstrip()):
            return False
    return True


def check(page: Path) -> int:
    failures = 0
    found = blocks(page.read_text())
    pending_files: dict[str, str] = {}
    for number, (info, body, line) in enumerate(found):
        if info != "python":
            continue
        first = body.splitlines()[0] if body.strip() else ""
        if first.startswith("# file: "):
            pending_files[first[len("# file: ") :].strip()] = body
            continue
        expected = None
        loose = False
        if (
            number + 2 < len(found)
            and found[number + 1][0] in ("output-marker", "loose-marker")
            and found[number + 2][0] == "text"
        ):
            expected = found[number + 2][1]
            loose = found[number + 1][0] == "loose-marker"
        with tempfile.TemporaryDirectory() as workdir:
            for name, content in pending_files.items():
                Path(workdir, name).write_text(content)
            pending_files = {}
            script = Path(workdir, "example.py")
            script.write_text(body)
            env = {key: value for key, value in os.environ.items() if key != "PARALLAX_MODE"}
            env["PYTHONPATH"] = workdir
            done = subprocess.run(
                [sys.executable, str(script)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        where = f"{page.relative_to(DOCS.parent)}:{line}"
        if done.returncode != 0:
            failures += 1
            print(f"FAIL {where}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        elif expected is not None and not matches(expected, done.stdout, loose=loose):
            failures += 1
            print(f"MISMATCH {where}\n--- expected\n{expected}--- got\n{done.stdout}")
        else:
            print(f"ok   {where}")
    return failures


def main(argv: list[str]) -> int:
    pages = [Path(arg).resolve() for arg in argv] or sorted(DOCS.rglob("*.md"))
    failures = sum(check(page) for page in pages)
    print(f"{failures} failed" if failures else "all examples ran")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
