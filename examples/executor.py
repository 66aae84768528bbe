"""``parallax.Executor``: a ``concurrent.futures.Executor`` on any parallax mode.

Shows:

* ``submit`` + ``concurrent.futures.as_completed``: handle results in the
  order they finish, with the stdlib's own helpers (``wait`` works too);
* ``map`` with the stdlib's meaning (every call submitted at once, results
  lazily and in order, ``timeout=`` for the whole iteration);
* ``imap(..., ordered=False)`` and ``starmap``, which parallax adds;
* ``executor.mode`` and ``executor.stats``: what ran, and how well;
* the same code on threads and on processes: only the mode changes.

Run it: ``python examples/executor.py`` (a few seconds on 2 cores).
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import as_completed

import parallax


def checksum(size_kib: int) -> str:
    """CPU-bound: hash a buffer of ``size_kib`` KiB a few hundred times."""
    data = bytes(size_kib * 1024)
    digest = b""
    for _ in range(200):
        digest = hashlib.sha256(digest + data).digest()
    return digest.hex()[:12]


def download(name: str, seconds: float) -> str:
    """I/O-bound stand-in: waits ``seconds``, as a download would."""
    time.sleep(seconds)
    return f"{name} ({seconds:.2f} s)"


def main() -> None:
    # Threads for waiting work: as_completed yields the fastest first.
    jobs = {"big.iso": 0.4, "notes.txt": 0.05, "photo.jpg": 0.2, "song.mp3": 0.3}
    with parallax.Executor("thread", workers=4) as executor:
        futures = {executor.submit(download, name, delay): name for name, delay in jobs.items()}
        finished = [futures[future] for future in as_completed(futures, timeout=30)]
        print(f"{executor.mode} executor, as_completed order: {finished}")
        assert sorted(finished) == sorted(jobs)  # typically shortest wait first

        # starmap: one argument tuple per call, results in input order.
        labels = executor.starmap(download, [("a", 0.01), ("b", 0.02)])
        assert labels == ["a (0.01 s)", "b (0.02 s)"]

    # Processes for CPU work: the same API.
    sizes = [64, 128, 32, 96, 64, 16, 128, 48]
    expected = [checksum(size) for size in sizes]
    with parallax.Executor("process", workers=2) as executor:
        ordered = list(executor.map(checksum, sizes, timeout=60))
        assert ordered == expected
        print(f"{executor.mode} executor, map (input order): {ordered[:3]} ...")

        as_they_finish = list(executor.imap(checksum, sizes, ordered=False))
        assert sorted(as_they_finish) == sorted(expected)

        one = executor.submit(checksum, 8)
        print(f"submit(checksum, 8).result() = {one.result(timeout=60)}")

        stats = executor.stats
        print(f"stats of its map/imap runs: {stats.tasks} tasks on {stats.workers} workers, "
              f"efficiency {stats.efficiency:.0%}")
        assert stats.tasks == 2 * len(sizes)


if __name__ == "__main__":
    main()
