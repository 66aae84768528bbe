"""Facts about the machine and interpreter this process runs on.

One home for what every floor asks: how many CPUs this process may use,
whether the GIL is on, and the default pool sizes that follow from them.
Tests pin these facts by patching this module, never the machine.
Worker-light: imports nothing beyond ``os`` and ``sys`` (``sysconfig`` only
where the interpreter cannot say whether the GIL is on).
"""

from __future__ import annotations

import os
import sys

__all__ = ["gil_enabled", "thread_pool_default", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-aware where Python is)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (True on ordinary builds)."""
    check = getattr(sys, "_is_gil_enabled", None)  # CPython 3.13+
    if check is not None:
        return bool(check())
    if sys.version_info < (3, 13):
        # No CPython before 3.13 can run without it (PEP 703). Reading the
        # build's configuration (sysconfig) would cost a script's first call
        # about 1 ms for nothing.
        return True
    import sysconfig  # a newer interpreter without the call: its build says

    return not sysconfig.get_config_var("Py_GIL_DISABLED")


def thread_pool_default() -> int:
    """Like the standard library: enough threads to overlap waiting, capped."""
    return min(32, usable_cpus() + 4)
