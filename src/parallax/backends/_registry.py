"""The registry of modes: mode name -> the factory of its backend.

Built-in backends are imported by name on first use, so ``import parallax``
never imports dask. ``register_backend`` plugs in a new one.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from ._base import Backend, WorkerSetup

__all__ = [
    "BackendFactory",
    "available_modes",
    "backend_class",
    "backend_options",
    "chunk_overhead",
    "create_backend",
    "default_workers",
    "register_backend",
]

BackendFactory = Callable[..., Backend]


class _Entry:
    """A registered mode: how to load its factory, the options it accepts
    (None: any keyword), the factory once loaded, and what to start before
    each backend is made (given the call's options), while its module loads."""

    __slots__ = ("ahead", "factory", "loader", "options")

    def __init__(self, loader: Callable[[], BackendFactory], options: frozenset[str] | None,
                 factory: BackendFactory | None = None,
                 ahead: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.loader = loader
        self.options = options
        self.factory = factory
        self.ahead = ahead

    def load(self) -> BackendFactory:
        if self.factory is None:
            self.factory = self.loader()
        return self.factory


_entries: dict[str, _Entry] = {}
_lock = threading.Lock()

#: keywords every factory receives, so not "backend options"
_COMMON = frozenset({"workers", "setup"})


def _options_of(factory: BackendFactory) -> frozenset[str] | None:
    import inspect  # only plug-ins are registered by signature

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            names.add(parameter.name)
    return frozenset(names - _COMMON)


def register_backend(name: str, factory: BackendFactory) -> None:
    """Plug in a backend under the mode ``name``.

    ``factory(workers=..., setup=..., **options)`` must return a
    :class:`Backend`; its keyword-only parameters are the backend options the
    mode accepts (``**kwargs`` accepts any). Registering an existing name
    replaces it.

    Raises:
        ValueError: ``name`` is empty or ``"auto"``.
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"backend name must be a non-empty string other than 'auto', not {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {type(factory).__name__}")
    with _lock:
        _entries[name] = _Entry(lambda: factory, _options_of(factory), factory)


def _register_builtin(name: str, target: str, options: frozenset[str],
                      ahead: Callable[[dict[str, Any]], None] | None = None) -> None:
    module_name, _, attribute = target.partition(":")

    def load() -> BackendFactory:
        module = importlib.import_module(module_name, __package__)
        factory: BackendFactory = getattr(module, attribute)
        return factory

    _entries[name] = _Entry(load, options, ahead=ahead)


def _template_ahead(options: dict[str, Any]) -> None:
    """Boot the fork template, if the pool will use one, while the process
    backend is imported and set up."""
    if options.get("preload"):
        return  # its own template, which needs the pool's environment: the pool starts it
    from .._template import start_ahead

    start_ahead(options.get("start_method"))


_register_builtin("serial", "._serial:SerialBackend", frozenset({"check_pickle"}))
_register_builtin("thread", "._thread:ThreadBackend", frozenset())
_register_builtin("process", "._process:ProcessBackend",
                  frozenset({"max_worker_memory", "forward_logs", "start_method", "preload"}),
                  ahead=_template_ahead)
_register_builtin("free-threaded", "._freethreaded:FreeThreadedBackend", frozenset())
_register_builtin("asyncio", "._asyncio:AsyncioBackend", frozenset({"loop"}))
_register_builtin("dask", "._dask:DaskBackend", frozenset({"address", "client"}))


def available_modes() -> tuple[str, ...]:
    """Every registered mode name, plus ``"auto"``."""
    with _lock:
        return ("auto", *_entries)


def backend_options() -> dict[str, frozenset[str] | None]:
    """Mode name -> the backend options it accepts (None: any)."""
    with _lock:
        return {name: entry.options for name, entry in _entries.items()}


def backend_class(name: str) -> type[Backend] | None:
    """Mode ``name``'s Backend class, its module imported on first use (None:
    the mode was registered with a factory that is not a Backend class)."""
    with _lock:
        entry = _entries[name]
    factory = entry.load()
    if isinstance(factory, type) and issubclass(factory, Backend):
        return factory
    return None


def default_workers(name: str) -> int | None:
    """Mode ``name``'s pool size for ``workers=None`` (None if it cannot say)."""
    cls = backend_class(name)
    return None if cls is None else cls.default_workers()


def chunk_overhead(name: str) -> float:
    """Mode ``name``'s cost of sending one chunk (:attr:`Backend.chunk_overhead`).

    A factory that is not a Backend class cannot say without creating a
    backend: the base class's value stands in for it.
    """
    cls = backend_class(name)
    return (cls or Backend).chunk_overhead


def create_backend(
    name: str, *, workers: int | None, setup: WorkerSetup, options: dict[str, Any]
) -> Backend:
    """A new backend of mode ``name``, given only the options it accepts."""
    with _lock:
        entry = _entries[name]
    if entry.ahead is not None:
        entry.ahead(options)
    factory = entry.load()
    accepted = entry.options
    if accepted is not None:
        options = {key: value for key, value in options.items() if key in accepted}
    return factory(workers=workers, setup=setup, **options)
