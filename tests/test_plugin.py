"""The pytest plugin, exercised in a pytester sandbox."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TEST_FILE = """
import parallax

def where(x):
    return x

def test_mode():
    with parallax.monitor() as mon:
        parallax.map(where, [1, 2], mode="process")
    print("MODE=" + mon.runs[-1].mode)

def test_each(parallax_mode):
    with parallax.monitor() as mon:
        assert parallax.map(where, [1, 2], mode="thread") == [1, 2]
    assert mon.runs[-1].mode == parallax_mode
"""


def test_parallax_mode_option_forces_a_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("-s", "-k", "test_mode", "--parallax-mode=serial")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*MODE=serial*"])


def test_parallax_mode_fixture_runs_every_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("-v", "-k", "test_each", "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*test_each?serial?*", "*test_each?thread?*", "*test_each?process?*",
         "*test_each?free-threaded?*"]
    )


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest_subprocess("--parallax-mode=warp")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*valid modes*"])
