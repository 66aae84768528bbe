"""Log forwarding from process workers: both ends of the link, and end to end."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from parallax import _logforward
from parallax._logforward import lowest_level, replay


@pytest.fixture
def pristine_logging() -> Iterator[None]:
    """Undo what the worker side changes: the last-resort handler, the root level."""
    last_resort, level = logging.lastResort, logging.getLogger().level
    try:
        yield
    finally:
        logging.lastResort = last_resort
        logging.getLogger().setLevel(level)


class Unpicklable:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Unpicklable>"


def test_a_record_that_finds_no_handler_is_sent_ready_to_pickle(pristine_logging: None) -> None:
    sent: list[dict[str, Any]] = []
    logging.getLogger().setLevel(logging.WARNING)
    _logforward._install(logging, sent.append, logging.INFO, "parallax-process-9-1")
    assert logging.getLogger().level == logging.INFO  # untouched before: lowered
    logger = logging.getLogger("parallax-test-orphan")
    logger.propagate = False  # no handler above it (pytest's live handlers sit on root)
    try:
        logger.debug("below the level: %s", 1)
        logger.info("item %s of %s", Unpicklable(), 3, extra={"job": Unpicklable(), "n": 4})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.propagate = True
    assert [fields["msg"] for fields in sent] == ["item <Unpicklable> of 3", "failed"]
    info, error = sent
    assert info["args"] is None and info["levelno"] == logging.INFO
    assert info["processName"] == "parallax-process-9-1"
    assert info["job"] == "<Unpicklable>" and info["n"] == 4  # extras kept, as repr if need be
    assert error["exc_info"] is None and "ValueError: boom" in error["exc_text"]
    import pickle

    for fields in sent:
        pickle.dumps(fields)


def test_a_record_the_worker_handles_itself_is_not_sent(pristine_logging: None) -> None:
    sent: list[dict[str, Any]] = []
    _logforward._install(logging, sent.append, logging.INFO, "w")
    logger = logging.getLogger("parallax-test-configured")
    logger.propagate = False
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("mine")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert seen == ["mine"] and sent == []


def test_a_root_level_the_worker_set_is_kept(pristine_logging: None) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    ignored: list[dict[str, Any]] = []
    _logforward._install(logging, ignored.append, logging.DEBUG, "w")
    assert logging.getLogger().level == logging.ERROR


def test_replay_hands_the_record_to_the_callers_logger_by_its_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fields = logging.LogRecord("app.worker", logging.INFO, "/x.py", 3, "hello 1", None,
                               None).__dict__ | {"processName": "parallax-process-1-2"}
    with caplog.at_level(logging.WARNING, logger="app.worker"):
        replay(dict(fields))  # INFO, the caller's logger takes WARNING and up
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="app.worker"):
        replay(dict(fields))
    [record] = caplog.records
    assert record.getMessage() == "hello 1" and record.name == "app.worker"
    assert record.processName == "parallax-process-1-2"


WORKER_SIDE = """
import json, sys
from parallax._logforward import forward_from_worker
sent = []
forward_from_worker(sent.append, 20, "worker-name")
assert "logging" not in sys.modules  # not imported for it
import logging
logging.getLogger("app").info("after the import %d", 7)
logging.getLogger("app").debug("dropped")
print(json.dumps([(f["name"], f["msg"], f["processName"]) for f in sent]))
"""


def test_the_worker_side_waits_for_its_code_to_import_logging() -> None:
    out = subprocess.run([sys.executable, "-c", WORKER_SIDE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == [["app", "after the import 7", "worker-name"]]


LEVELS = """
import sys
from parallax._logforward import lowest_level
assert "logging" not in sys.modules
print(lowest_level())
import logging
print(lowest_level())
logging.getLogger("app.db").setLevel(logging.DEBUG)
print(lowest_level())
logging.disable(logging.INFO)
print(lowest_level())
"""


def test_the_lowest_level_any_caller_logger_takes() -> None:
    out = subprocess.run([sys.executable, "-c", LEVELS], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == [str(logging.WARNING), str(logging.WARNING), str(logging.DEBUG),
                   str(logging.INFO + 1)]


def test_lowest_level_here_is_an_int() -> None:
    assert isinstance(lowest_level(), int)
