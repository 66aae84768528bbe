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

import parallax
from conftest import Backend
from helpers import configure_worker_logging, double, log_and_double, log_failure
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


# -- end to end ------------------------------------------------------------------------------


def test_records_of_every_mode_reach_the_callers_handlers(
    backend: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    if backend.mode == "dask":
        pytest.skip("records stay in the dask workers' own logs (documented)")
    with caplog.at_level(logging.WARNING, logger="app.tasks"):
        assert backend.map(log_and_double, range(6)) == [0, 2, 4, 6, 8, 10]
    forwarded = sorted(r.getMessage() for r in caplog.records if r.name == "app.tasks")
    assert forwarded == [f"warning from item {x}" for x in range(6)]
    if backend.processes:
        assert all(r.processName.startswith("parallax-process-") for r in caplog.records)


def test_a_process_workers_levels_follow_the_caller_at_its_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="app.tasks"), \
            parallax.Executor("process", workers=1) as executor:
        assert list(executor.map(log_and_double, [1, 2])) == [2, 4]
    messages = [r.getMessage() for r in caplog.records if r.name == "app.tasks"]
    assert messages == ["warning from item 1", "info from item 1",
                        "warning from item 2", "info from item 2"]


def test_a_forwarded_exception_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.tasks"):
        parallax.map(log_failure, [3], mode="process")
    [record] = [r for r in caplog.records if r.name == "app.tasks"]
    assert record.getMessage() == "item 3 failed" and record.levelno == logging.ERROR
    assert "ValueError: item 3 is odd" in (record.exc_text or "")
    assert "ValueError: item 3 is odd" in caplog.text  # the caller's formatter shows it


def test_forward_logs_false_leaves_the_records_in_the_worker(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.tasks"):
        assert parallax.map(log_and_double, [5], mode="process", forward_logs=False) == [10]
    assert [r for r in caplog.records if r.name == "app.tasks"] == []
    assert "warning from item 5" in capfd.readouterr().err  # the last-resort handler's


def test_a_worker_that_configures_logging_keeps_its_records(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.tasks"):
        assert parallax.map(log_and_double, [7], mode="process",
                            initializer=configure_worker_logging) == [14]
    assert [r for r in caplog.records if r.name == "app.tasks"] == []
    out = capfd.readouterr().out
    assert "WORKER warning from item 7" in out and "WORKER info from item 7" in out


def test_forward_logs_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="forward_logs must be True or False, not 'yes'"):
        parallax.map(double, [1], mode="process", forward_logs="yes")
    with pytest.raises(TypeError, match="did you mean 'forward_logs'"):
        parallax.map(double, [1], mode="process", forward_log=False)
