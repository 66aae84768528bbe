"""Busy processes that load the CPUs, stopped by their pids (issue #13, item 11).

To see how something behaves on a machine whose cores are taken (timeouts,
the auto-selector, tests with loose time limits)::

    python benchmarks/cpu_burners.py --burners 2 -- python -m pytest -q   # a command under load
    python benchmarks/cpu_burners.py --burners 2 --seconds 60             # burn only; Ctrl-C stops

The first form exits with the command's exit status (128 + N if a signal N
ended it). From Python::

    from benchmarks.cpu_burners import CpuBurners

    with CpuBurners(2) as burners:   # burners.pids: the processes' ids
        ...

Each burner is a fresh interpreter spinning a pure-Python loop. They are
stopped by their own pids (SIGTERM, then SIGKILL after a grace period) when
the block or the command ends, on Ctrl-C and on SIGTERM. Should the process
that started them die without stopping them (SIGKILL, a crash), each burner
sees within milliseconds that its parent changed and exits by itself. They
run in a session of their own, so the terminal's Ctrl-C goes to the command,
not to them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType, TracebackType

#: the burner: spins until the process that started it (argv[1]) is not its parent any more
BURNER = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(50_000):  # a few milliseconds between two looks at the parent
        pass
"""
#: seconds a burner gets to end after SIGTERM before it is killed
GRACE = 5.0
#: seconds a command gets to end after Ctrl-C or SIGTERM before it is killed
COMMAND_GRACE = 10.0


class CpuBurners:
    """``count`` CPU-burning processes, from ``start()`` (or ``with``) until ``stop()``."""

    def __init__(self, count: int = 2) -> None:
        if count < 0:
            raise ValueError(f"count must be 0 or more, not {count}")
        self.count = count
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def start(self) -> CpuBurners:
        if self._processes:
            raise RuntimeError("the burners are running already")
        try:
            for _ in range(self.count):
                self._processes.append(subprocess.Popen(
                    [sys.executable, "-I", "-c", BURNER, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    start_new_session=True,  # the terminal's Ctrl-C is not theirs
                ))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every burner by its pid: SIGTERM, then SIGKILL after ``GRACE`` seconds."""
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + GRACE
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> CpuBurners:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class Terminated(Exception):
    """SIGTERM reached this process: unwind, so that the burners are stopped."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # once only: a second SIGTERM must not cut the burners' stop short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def exit_status(returncode: int) -> int:
    """A shell's exit status for a child's return code (128 + N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _interrupt(process: subprocess.Popen[bytes], signum: int) -> int:
    """Pass a signal on to the command (by its pid) unless it ended already; its status."""
    try:
        return exit_status(process.wait(0.5))  # Ctrl-C from the terminal reached it too
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
    try:
        process.wait(COMMAND_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return 128 + signum


def run_under_load(command: Sequence[str], burners: int = 2) -> int:
    """Run ``command`` while ``burners`` processes burn CPU; its exit status."""
    with CpuBurners(burners) as running:
        print(f"cpu_burners: {burners} burner(s), pids {running.pids}", file=sys.stderr)
        process = subprocess.Popen(list(command))
        try:
            return exit_status(process.wait())
        except KeyboardInterrupt:
            return _interrupt(process, signal.SIGINT)
        except Terminated:
            return _interrupt(process, signal.SIGTERM)


def burn(burners: int, seconds: float | None) -> int:
    """Burn for ``seconds`` (None: until Ctrl-C or SIGTERM); exit status 0."""
    with CpuBurners(burners) as running:
        until = "Ctrl-C" if seconds is None else f"{seconds:g} s"
        print(f"cpu_burners: {burners} burner(s), pids {running.pids}, until {until}",
              file=sys.stderr)
        try:
            if seconds is None:
                while True:
                    time.sleep(3600)
            time.sleep(seconds)
        except (KeyboardInterrupt, Terminated):
            pass
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Load the CPUs with busy processes, alone or while a command runs.",
        usage="%(prog)s [--burners N] [--seconds S] [-- COMMAND ...]",
    )
    parser.add_argument("--burners", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="with no command: burn this long (default: until Ctrl-C)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after '--': the command to run under load")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.burners < 0:
        parser.error("--burners must be 0 or more")
    if command and args.seconds is not None:
        parser.error("--seconds is for burning alone; a command ends the load when it ends")
    signal.signal(signal.SIGTERM, _raise_terminated)
    if command:
        return run_under_load(command, args.burners)
    return burn(args.burners, args.seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
