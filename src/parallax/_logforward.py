"""Log records of process workers, replayed through the caller's loggers.

A process worker is a fresh interpreter whose ``logging`` is unconfigured:
without help, its records of level WARNING and above print bare through
logging's last-resort handler and the rest are dropped. With forwarding on
(the default of process mode; ``forward_logs=False`` turns it off) the worker
sends each record its own logging would have given the last-resort handler
to its pool, and the pool hands it to the caller's logger of the same name,
so the caller's handlers, formats and levels apply. A worker that configures
logging itself (``logging.basicConfig`` in an ``initializer``) keeps its own
handlers: records that find a handler in the worker are not forwarded.

Both ends of the link live here: :func:`forward_from_worker` in the worker,
:func:`lowest_level` and :func:`replay` in the caller. ``logging`` is not
imported in the worker until its code imports it (``_onimport``).
"""

from __future__ import annotations

import pickle
import sys

from ._onimport import after_import

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["forward_from_worker", "lowest_level", "replay"]

#: logging.WARNING: the root logger's level until someone changes it
_DEFAULT_LEVEL = 30

#: attributes every LogRecord has; anything else came in ``extra=``
_STANDARD_FIELDS = frozenset((
    "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
    "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
    "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
    "message", "asctime",
))


def lowest_level() -> int:
    """The lowest level any logger of the caller lets through: a worker need
    not send what no logger here would take. Read when a worker starts."""
    logging = sys.modules.get("logging")
    if logging is None:  # nobody configured anything: the root's default
        return _DEFAULT_LEVEL
    manager = logging.Logger.manager
    try:
        loggers = list(manager.loggerDict.values())
    except RuntimeError:  # another thread made a logger meanwhile: send every
        return 1  # record; the caller's levels still decide when one arrives
    levels = [logging.getLogger().getEffectiveLevel()]
    levels += [logger.level for logger in loggers
               if isinstance(logger, logging.Logger) and logger.level]
    return int(max(min(levels), manager.disable + 1 if manager.disable else 0))


def replay(fields: dict[str, Any]) -> None:
    """Hand a record a worker sent to the caller's logger of its name (caller side)."""
    import logging

    record = logging.makeLogRecord(fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):  # the caller's levels, as they are now
        logger.handle(record)


def forward_from_worker(send: Callable[[dict[str, Any]], None], level: int,
                        worker_name: str) -> None:
    """In a process worker: from the moment ``logging`` is imported, send every
    record at ``level`` or above that finds no handler here through ``send``."""
    after_import("logging", lambda logging: _install(logging, send, level, worker_name))


def _install(logging: Any, send: Callable[[dict[str, Any]], None], level: int,
             worker_name: str) -> None:
    last_resort = logging.lastResort

    class ForwardToCaller(logging.Handler):  # type: ignore[misc]  # (logging: a module)
        """Stands in for the last-resort handler: it sees exactly the records
        that found no handler in the worker."""

        def emit(self, record: Any) -> None:
            try:
                send(_portable(record, worker_name))
            except OSError:  # the pool is gone (a finalizer logging at the end)
                if last_resort is not None and record.levelno >= last_resort.level:
                    last_resort.handle(record)
            except Exception:
                self.handleError(record)

    logging.lastResort = ForwardToCaller(level)
    root = logging.getLogger()
    if root.level == _DEFAULT_LEVEL:  # untouched: let through what the caller takes
        root.setLevel(level)


def _portable(record: Any, worker_name: str) -> dict[str, Any]:
    """The record's fields, ready to pickle: the message formatted here (its
    arguments may not pickle), the traceback as text, extras that do not
    pickle as their repr."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info and not record.exc_text:
        import logging

        fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
    fields["exc_info"] = None
    fields.pop("message", None)
    fields["processName"] = worker_name
    for key in fields.keys() - _STANDARD_FIELDS:
        try:
            pickle.dumps(fields[key])
        except Exception:
            fields[key] = repr(fields[key])
    return fields
