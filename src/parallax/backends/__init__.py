"""Backends: the engines that run chunks, and the registry of modes.

Re-exports only. The interface every engine implements lives in
``_base.py`` (:class:`Backend`, :class:`WorkerSetup`), the mode registry in
``_registry.py``, the engines in one module each. A third-party backend
needs only the names below.
"""

from .._host import usable_cpus
from .._mark import new_mark
from .._units import Chunk, ChunkResult, Failure, Job
from .._worker import run_chunk
from ._base import Backend, WorkerSetup, failed_chunk, initializer_error
from ._registry import (
    BackendFactory,
    available_modes,
    backend_options,
    create_backend,
    default_workers,
    register_backend,
)

__all__ = [
    "Backend",
    "BackendFactory",
    "Chunk",
    "ChunkResult",
    "Failure",
    "Job",
    "WorkerSetup",
    "available_modes",
    "backend_options",
    "create_backend",
    "default_workers",
    "failed_chunk",
    "initializer_error",
    "new_mark",
    "register_backend",
    "run_chunk",
    "usable_cpus",
]
