"""Points CPython's own ``test.test_concurrent_futures`` at ``parallax.Executor``.

This is the one place where the stdlib tests meet parallax, and it adapts
*names only*:

* ``max_workers`` -> ``workers`` (also when passed positionally, as the
  stdlib signatures allow: ``executor_type(1, ...)``);
* ``max_tasks_per_child`` -> ``max_tasks_per_worker``;
* ``mp_context`` and ``thread_name_prefix`` are dropped (parallax starts its
  own workers; threads are named by parallax).

Nothing else is changed: no behaviour is patched, no assertion weakened.
``tests/test_stdlib_conformance.py`` builds the test classes from the stdlib
mixins with these executor types; ``SKIPS`` and ``KNOWN_FAILURES`` there say
which tests cannot apply and which fail today (see docs/stdlib-conformance.md).
"""

from __future__ import annotations

import importlib
import multiprocessing.context
from types import ModuleType
from typing import Any, ClassVar

import parallax

#: the stdlib test modules the harness draws from (``test_future`` tests the
#: ``Future`` class alone, which parallax reuses unchanged, so it is not run)
STDLIB_MODULES = (
    "util",
    "executor",
    "test_thread_pool",
    "test_process_pool",
    "test_wait",
    "test_as_completed",
    "test_shutdown",
    "test_init",
    "test_deadlock",
)


def load_stdlib() -> tuple[dict[str, ModuleType], str]:
    """The stdlib test modules by short name, or ``({}, why they are missing)``."""
    try:
        modules = {
            name: importlib.import_module(f"test.test_concurrent_futures.{name}")
            for name in STDLIB_MODULES
        }
    except ImportError as exc:
        return {}, (
            "CPython's test.test_concurrent_futures package is not installed with this "
            f"interpreter ({exc}); use a CPython build that ships its test suite (3.12+)"
        )
    return modules, ""


class ThreadAdapter(parallax.Executor):
    """``ThreadPoolExecutor``'s signature, mapped onto ``parallax.Executor("thread")``."""

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        del thread_name_prefix  # parallax names its own threads
        super().__init__(
            "thread", workers=max_workers, initializer=initializer, initargs=initargs
        )


class ProcessAdapter(parallax.Executor):
    """``ProcessPoolExecutor``'s signature, mapped onto ``parallax.Executor("process")``."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | None = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        del mp_context  # parallax starts its workers itself (fresh interpreters)
        super().__init__(
            "process",
            workers=max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_child,
        )


def executor_mixins(util: ModuleType) -> dict[str, type]:
    """The stdlib's ``ExecutorMixin`` with a parallax executor type, per mode."""

    class ParallaxThreadMixin(util.ExecutorMixin):  # type: ignore[name-defined,misc]
        executor_type: ClassVar[type] = ThreadAdapter

    class ParallaxProcessMixin(util.ExecutorMixin):  # type: ignore[name-defined,misc]
        executor_type: ClassVar[type] = ProcessAdapter
        # The tests build semaphores, queues and managers from get_context();
        # "spawn" is what parallax's fresh worker interpreters resemble most.
        # The adapter drops the mp_context the mixin passes along.
        ctx = "spawn"

    return {"thread": ParallaxThreadMixin, "process": ParallaxProcessMixin}
