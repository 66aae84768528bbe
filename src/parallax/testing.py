"""pytest plugin: run a test suite's parallax calls in a chosen mode.

Registered through the ``pytest11`` entry point, so installing parallax is
enough:

* ``pytest --parallax-mode=serial`` runs every parallax call in every test
  serially (as ``parallax.using("serial")`` around each test would), which
  makes failures show plain tracebacks and breakpoints work;
* the ``parallax_mode`` fixture runs a test once per mode (serial, thread,
  process, free-threaded), with that mode forced for the test's duration::

      def test_scores(parallax_mode):
          assert score.map([1, 2]) == [score(1), score(2)]

* ``pytest --parallax-check-pickle`` (or ``PARALLAX_CHECK_PICKLE=1`` in the
  environment) makes every parallax call of the session check that its
  function, each argument and each result would pickle for a process, in
  whatever mode it runs: work that ``mode="auto"`` runs serially or on
  threads while the test data is small fails in the tests as it would at
  scale in process mode (a lock in an argument, a lambda in a result).

Asyncio and dask are left out of ``parallax_mode``: asyncio mode takes only
coroutine functions, and dask needs a cluster; force them with
``--parallax-mode`` or ``parallax.using`` where they apply.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._config import BUILTIN_MODES, check_mode, set_pickle_checks, using

__all__ = ["CHECK_PICKLE_VARIABLE", "PLUGIN_MODES", "parallax_mode"]

#: the environment variable that turns on ``--parallax-check-pickle``
CHECK_PICKLE_VARIABLE = "PARALLAX_CHECK_PICKLE"
#: what it may be set to, to turn the checks on (anything else but empty is refused)
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")

#: the modes the ``parallax_mode`` fixture runs a test in: the built-in ones
#: but "auto" (it picks one of the others), asyncio and dask (see above)
PLUGIN_MODES = tuple(mode for mode in BUILTIN_MODES if mode not in ("auto", "asyncio", "dask"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parallax")
    group.addoption(
        "--parallax-mode",
        action="store",
        default=None,
        metavar="MODE",
        help="force this parallax mode for every parallax call in every test",
    )
    group.addoption(
        "--parallax-check-pickle",
        action="store_true",
        default=False,
        help="check in every mode that each parallax call's function, arguments and results "
        f"pickle, as process mode needs (also: {CHECK_PICKLE_VARIABLE}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--parallax-mode", default=None)
    if mode is not None:
        try:
            check_mode(mode, where="--parallax-mode")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    if config.getoption("--parallax-check-pickle", default=False) or _check_pickle_from_env():
        config.stash[_previous_checks] = set_pickle_checks(True)


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_previous_checks, None)
    if previous is not None:
        set_pickle_checks(previous)


#: the pickle-check setting before this session turned it on
_previous_checks = pytest.StashKey[bool]()


def _check_pickle_from_env() -> bool:
    value = os.environ.get(CHECK_PICKLE_VARIABLE, "").strip().lower()
    if value in _ON or value in _OFF:
        return value in _ON
    raise pytest.UsageError(
        f"{CHECK_PICKLE_VARIABLE}={os.environ[CHECK_PICKLE_VARIABLE]!r}: use 1 to check "
        "pickling in every parallax call, or 0 (or leave it unset) not to"
    )


@pytest.fixture(autouse=True)
def _parallax_forced_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    mode = request.config.getoption("--parallax-mode", default=None)
    if mode is None or "parallax_mode" in request.fixturenames:
        yield
        return
    with using(mode):
        yield


@pytest.fixture(params=PLUGIN_MODES)
def parallax_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per mode, with that mode forced while it runs."""
    mode: str = request.param
    with using(mode):
        yield mode
