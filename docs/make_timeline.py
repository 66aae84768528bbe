"""Draw docs/images/timeline.png from a real run (the picture in monitoring.md).

Run from the repository root: ``python docs/make_timeline.py`` (needs
matplotlib). The workload is CPU-bound pure Python with uneven item sizes,
so ``mode="auto"`` picks process mode on a machine with the GIL; the item
for n=60 raises after its work, to show a failed item in red. The picture
differs a little from run to run, as timings do.
"""

from __future__ import annotations

from pathlib import Path

import parallax

HERE = Path(__file__).resolve().parent


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
    return total


def main() -> None:
    with parallax.monitor() as mon:
        parallax.map(collatz_steps, range(1, 81), errors="return")
    stats = mon.runs[0]
    print(stats.summary())
    target = stats.plot_timeline(HERE / "images" / "timeline.png")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
