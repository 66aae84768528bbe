"""Draw docs/images/timeline.png from a real run (the picture in monitoring.md).

Run from the repository root: ``python docs/make_timeline.py`` (needs
matplotlib). The workload is CPU-bound pure Python with uneven item sizes,
so ``mode="auto"`` picks process mode on a machine with the GIL; the item
for n=60 raises after its work, to show a failed item in red, and the item
for n=30 fails once (a marker file, named in the environment the workers
inherit, remembers it across processes) and succeeds on its retry, to show
a retried item. The picture differs a little from run to run, as timings do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import parallax

HERE = Path(__file__).resolve().parent


#: the environment variable naming the marker file of item 30's first failure
MARKER = "PARALLAX_TIMELINE_MARKER"


def collatz_steps(n: int) -> int:
    """Sum of Collatz path lengths below ``n * 200`` (uneven CPU work)."""
    total = 0
    for start in range(1, n * 200):
        value, steps = start, 0
        while value != 1:
            value = value // 2 if value % 2 == 0 else 3 * value + 1
            steps += 1
        total += steps
    if n == 60:
        raise ValueError("item 60 fails on purpose, after its work")
    marker = Path(os.environ.get(MARKER, "/nonexistent/marker"))
    if n == 30 and marker.parent.is_dir() and not marker.exists():
        marker.touch()
        raise OSError("item 30 fails once, then succeeds on its retry")
    return total


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch, parallax.monitor() as mon:
        os.environ[MARKER] = str(Path(scratch) / "item-30-failed")  # before workers start
        parallax.map(collatz_steps, range(1, 81), errors="return", retries=1, retry_on=OSError)
    stats = mon.runs[0]
    print(stats.summary())
    target = stats.plot_timeline(HERE / "images" / "timeline.png")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
