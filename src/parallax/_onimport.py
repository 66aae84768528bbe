"""Run a callback on a module once it is imported, without importing it first.

A process worker must not import what its task may never use (``logging``,
``multiprocessing``: milliseconds on every worker start), yet some of its
set-up belongs to those modules: the caller's authkey on
``multiprocessing.process``, the log forwarding handler on ``logging``. If
the module is loaded already the callback runs now; otherwise a finder that
finds nothing itself wraps the module's own loader, and the callback runs
right after the module body.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

__all__ = ["after_import"]


def after_import(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once the module ``name`` is imported (now if it is)."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    else:
        sys.meta_path.insert(0, _Watch(name, callback))


class _Watch:
    """A finder for one module name: hands the import on, wrapping its loader."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                spec.loader = _ThenCall(spec.loader, self.callback)
                return spec
        return None


class _ThenCall:
    """A module's own loader, then the callback on the loaded module."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.callback(module)

    def __getattr__(self, name: str) -> Any:  # get_source and the like
        return getattr(self.loader, name)
