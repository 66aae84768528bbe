"""parallax: run a function over many inputs in parallel, on the engine that suits the work.

>>> import parallax
>>> parallax.map(abs, [-1, -2, 3], mode="serial")
[1, 2, 3]

The names below are imported on first use (PEP 562), so ``import parallax``
is cheap and a process worker, which imports this package too, starts fast.
"""

import importlib as _importlib

TYPE_CHECKING = False  # not typing's: a process worker imports this package too
if TYPE_CHECKING:
    from ._api import ParallelFunction, amap, imap, map, parallel, plan, starmap
    from ._auto import Plan
    from ._broken import WorkerCrashedError
    from ._config import using
    from ._errors import ParallaxError, SerializationError, TaskTimeoutError, WorkerTraceback
    from ._executor import Executor
    from ._progress import ProgressUpdate
    from ._recorder import Monitor, monitor
    from ._stats import Stats, TaskRecord, WorkerRecord
    from ._worker import worker_state
    from .backends import Backend, register_backend
del TYPE_CHECKING

__version__ = "0.1.0"

__all__ = (
    "Backend",
    "Executor",
    "Monitor",
    "ParallaxError",
    "ParallelFunction",
    "Plan",
    "ProgressUpdate",
    "SerializationError",
    "Stats",
    "TaskRecord",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerRecord",
    "WorkerTraceback",
    "__version__",
    "amap",
    "imap",
    "map",
    "monitor",
    "parallel",
    "plan",
    "register_backend",
    "starmap",
    "using",
    "worker_state",
)

#: public name -> the private module that defines it
_HOME = {
    "Backend": ".backends",
    "Executor": "._executor",
    "Monitor": "._recorder",
    "ParallaxError": "._errors",
    "ParallelFunction": "._api",
    "Plan": "._auto",
    "ProgressUpdate": "._progress",
    "SerializationError": "._errors",
    "Stats": "._stats",
    "TaskRecord": "._stats",
    "TaskTimeoutError": "._errors",
    "WorkerCrashedError": "._broken",
    "WorkerRecord": "._stats",
    "WorkerTraceback": "._errors",
    "amap": "._api",
    "imap": "._api",
    "map": "._api",
    "monitor": "._recorder",
    "parallel": "._api",
    "plan": "._api",
    "register_backend": ".backends",
    "starmap": "._api",
    "using": "._config",
    "worker_state": "._worker",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'parallax' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
