"""Per-worker resources: open once in the initializer, use in every task,
close in the finalizer.

Shows:

* ``initializer=``: each worker opens its own sqlite database (one file per
  worker: no two writers wait on one lock) and keeps the connection in
  ``parallax.worker_state()``, the worker's own dict;
* tasks reach the same connection through ``parallax.worker_state()`` (it
  works for functions defined in ``__main__``, in process mode too);
* ``finalizer=``: each worker commits and closes its connection as it stops
  (at shutdown, and when ``max_tasks_per_worker`` recycles it).

Run it: ``python examples/worker_resources.py`` (a second or two).
"""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from pathlib import Path

import parallax


def open_database(directory: str) -> None:
    """Initializer: this worker's own database and connection (a sqlite
    connection is not shared between threads or processes)."""
    connection = sqlite3.connect(Path(directory) / f"worker-{uuid.uuid4().hex}.db")
    connection.execute("CREATE TABLE squares (n INTEGER PRIMARY KEY, square INTEGER)")
    parallax.worker_state()["db"] = connection


def store_square(n: int) -> int:
    """Task: compute, and record the result through this worker's connection."""
    connection: sqlite3.Connection = parallax.worker_state()["db"]
    connection.execute("INSERT INTO squares VALUES (?, ?)", (n, n * n))
    return n * n


def close_database() -> None:
    """Finalizer: commit what this worker wrote and close its connection."""
    connection: sqlite3.Connection = parallax.worker_state().pop("db")
    connection.commit()
    connection.close()


def count_rows(directory: Path) -> tuple[int, int, int]:
    """(databases, rows, sum of squares) over every worker's database."""
    databases = rows = total = 0
    for path in sorted(directory.glob("worker-*.db")):
        connection = sqlite3.connect(path)
        count, summed = connection.execute("SELECT COUNT(*), SUM(square) FROM squares").fetchone()
        connection.close()
        databases, rows, total = databases + 1, rows + count, total + (summed or 0)
    return databases, rows, total


def main() -> None:
    for mode in ("thread", "process"):
        with tempfile.TemporaryDirectory() as directory:
            squares = parallax.map(
                store_square, range(100), mode=mode, workers=2,
                initializer=open_database, initargs=(directory,), finalizer=close_database,
                max_tasks_per_worker=30,  # a recycled worker closes; its successor opens
            )
            databases, rows, total = count_rows(Path(directory))
            print(f"{mode}: {len(squares)} squares returned, {rows} rows stored "
                  f"(sum {total}) by the finalizers of {databases} workers")


if __name__ == "__main__":
    main()
