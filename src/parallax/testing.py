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

Asyncio and dask are left out of ``parallax_mode``: asyncio mode takes only
coroutine functions, and dask needs a cluster; force them with
``--parallax-mode`` or ``parallax.using`` where they apply.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._config import BUILTIN_MODES, check_mode, using

__all__ = ["PLUGIN_MODES", "parallax_mode"]

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


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--parallax-mode", default=None)
    if mode is not None:
        try:
            check_mode(mode, where="--parallax-mode")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None


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
