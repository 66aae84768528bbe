"""parallax: run a function over many inputs in parallel, on the engine that suits the work.

>>> import parallax
>>> parallax.map(abs, [-1, -2, 3], mode="serial")
[1, 2, 3]
"""

from ._api import ParallelFunction, amap, imap, map, parallel, plan, starmap
from ._auto import Plan
from ._config import using
from ._errors import (
    ParallaxError,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerTraceback,
)
from ._executor import Executor
from ._progress import ProgressUpdate
from ._stats import Monitor, Stats, TaskRecord, WorkerRecord, monitor
from .backends import Backend, register_backend

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
)
