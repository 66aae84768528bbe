"""using(), PARALLAX_MODE and nesting: which mode a call runs in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import parallax
from helpers import where
from parallax._config import BUILTIN_MODES
from parallax.backends import available_modes


def mode_of_run(call: object) -> str:
    with parallax.monitor() as monitor:
        call()  # type: ignore[operator]
    return monitor.runs[-1].mode


def test_using_overrides_an_explicit_mode() -> None:
    with parallax.using("serial"):
        assert mode_of_run(lambda: parallax.map(where, range(3), mode="process")) == "serial"


def test_using_overrides_a_decorator_default() -> None:
    @parallax.parallel(mode="process")
    def work(x: int) -> int:
        return x

    with parallax.using("thread"):
        assert mode_of_run(lambda: work.map(range(3))) == "thread"


def test_using_nests_and_restores() -> None:
    with parallax.using("thread"):
        with parallax.using("serial"):
            assert mode_of_run(lambda: parallax.map(where, [1])) == "serial"
        assert mode_of_run(lambda: parallax.map(where, [1])) == "thread"
    assert mode_of_run(lambda: parallax.map(where, [1], mode="thread")) == "thread"


def test_using_does_not_leak_into_another_thread() -> None:
    seen: list[str] = []

    def other() -> None:
        seen.append(mode_of_run(lambda: parallax.map(where, [1], mode="thread")))

    with parallax.using("serial"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == ["thread"]


def test_using_is_task_local() -> None:
    async def in_task(mode: str | None) -> str:
        if mode is None:
            await asyncio.sleep(0.01)
            return mode_of_run(lambda: parallax.map(where, [1], mode="thread"))
        with parallax.using(mode):
            await asyncio.sleep(0.02)
            return mode_of_run(lambda: parallax.map(where, [1], mode="thread"))

    async def main() -> list[str]:
        return list(await asyncio.gather(in_task("serial"), in_task(None)))

    assert asyncio.run(main()) == ["serial", "thread"]


def test_every_builtin_mode_is_registered_and_accepted() -> None:
    # The one list of modes (the Mode Literal) and the backend registry agree.
    assert set(BUILTIN_MODES) <= set(available_modes())
    assert len(BUILTIN_MODES) == len(set(BUILTIN_MODES)) and "auto" in BUILTIN_MODES
    for mode in BUILTIN_MODES:
        with parallax.using(mode):
            pass


def test_using_rejects_unknown_modes_and_options() -> None:
    with pytest.raises(ValueError, match="valid modes"), parallax.using("warp"):
        pass
    with pytest.raises(TypeError, match="'bogus'"), parallax.using("thread", bogus=1):
        pass


def test_using_options_reach_the_backend() -> None:
    import threading as threading_module

    lock = threading_module.Lock()
    with parallax.using("serial", check_pickle=True), pytest.raises(parallax.SerializationError):
        parallax.map(lambda x: lock and x, [1], mode="thread")


def run_script(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


SCRIPT = """
    import parallax
    with parallax.monitor() as monitor:
        parallax.map(abs, [1, -2], mode="process")
    print(monitor.runs[-1].mode)
"""


def test_environment_variable_beats_explicit_mode() -> None:
    assert run_script(SCRIPT, PARALLAX_MODE="serial") == "serial"


def test_using_beats_environment_variable() -> None:
    code = """
        import parallax
        with parallax.monitor() as monitor, parallax.using("thread"):
            parallax.map(abs, [1, -2], mode="process")
        print(monitor.runs[-1].mode)
    """
    assert run_script(code, PARALLAX_MODE="serial") == "thread"


def test_bad_environment_variable_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import parallax; parallax.map(abs, [1])"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PARALLAX_MODE": "warp"}, check=False,
    )
    assert result.returncode != 0
    assert "PARALLAX_MODE" in result.stderr and "valid modes" in result.stderr


def nested(x: int) -> list[tuple[int, str]]:
    return parallax.map(where, range(3), mode="process")


def test_nested_call_in_a_process_worker_runs_serially() -> None:
    outer = parallax.map(nested, range(4), mode="process", workers=2)
    for inner in outer:
        pids = {pid for pid, _ in inner}
        assert len(pids) == 1 and os.getpid() not in pids  # ran inside the worker itself


def test_nested_call_in_a_thread_worker_runs_serially() -> None:
    def inner_modes(x: int) -> str:
        return mode_of_run(lambda: parallax.map(where, [1, 2], mode="process"))

    assert set(parallax.map(inner_modes, range(4), mode="thread")) == {"serial"}


def test_nested_call_with_the_same_pool_settings_does_not_deadlock() -> None:
    def inner(x: int) -> int:
        return x

    def outer(_: int) -> int:
        return sum(parallax.map(inner, range(4), mode="thread", workers=2))

    assert parallax.map(outer, range(4), mode="thread", workers=2, chunksize=1) == [6] * 4


def test_nested_reason_says_why_it_ran_serially() -> None:
    def inner_reason(_: int) -> str:
        return mode_of_run(lambda: None) if False else _reason_of_nested()

    reasons = parallax.map(inner_reason, range(2), mode="thread")
    assert all("inside a parallax worker" in reason for reason in reasons)


def _reason_of_nested() -> str:
    with parallax.monitor() as monitor:
        parallax.map(abs, [1], mode="process")
    return monitor.runs[-1].reason


# -- using(mode, **common keywords) (issue #12) ---------------------------------------------


def _fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def test_using_forces_the_common_keywords_over_the_calls_own() -> None:
    with parallax.using("thread", workers=2, chunksize=3), parallax.monitor() as monitor:
        assert parallax.map(abs, range(-9, 0), mode="process", workers=8, chunksize=1) == list(
            range(9, 0, -1))
    run = monitor.runs[0]
    assert (run.mode, run.workers, run.chunksize) == ("thread", 2, 3)


def test_using_forces_the_error_policy_and_order() -> None:
    with parallax.using("serial", errors="skip"):
        assert parallax.map(_fails_on_two, [1, 2, 3], errors="raise") == [1, 3]
    with parallax.using("serial", errors="return"):
        results = parallax.parallel(errors="raise")(_fails_on_two).map([1, 2])
    assert results[0] == 1 and isinstance(results[1], ValueError)


def test_using_common_keywords_nest_keyword_by_keyword() -> None:
    with parallax.using("serial", errors="skip"):
        with parallax.using("thread", workers=2), parallax.monitor() as monitor:
            assert parallax.map(_fails_on_two, [1, 2, 3]) == [1, 3]
        assert monitor.runs[0].mode == "thread" and monitor.runs[0].workers == 2
        with pytest.raises(ValueError, match="two"), parallax.using("serial", errors="raise"):
            parallax.map(_fails_on_two, [1, 2, 3])


def test_using_checks_the_common_keywords_like_map() -> None:
    bad = [({"workers": 0}, ValueError, "workers must be a positive integer"),
           ({"progress": 1}, TypeError, "progress must be True, False or a callable"),
           ({"errors": "ignore"}, ValueError, "errors must be one of")]
    for keywords, error, message in bad:
        with pytest.raises(error, match=message), parallax.using("thread", **keywords):
            pass


def test_an_executor_made_in_a_using_block_takes_its_keywords() -> None:
    with parallax.using("thread", workers=2, timeout=5):
        executor = parallax.Executor("process", workers=8)
    with executor:
        assert (executor.mode, executor.workers) == ("thread", 2)
        assert list(executor.map(abs, [-1, -2])) == [1, 2]


def test_using_forces_the_workers_of_submit() -> None:
    decorated = parallax.parallel(mode="thread", workers=8)(abs)
    with parallax.using("thread", workers=1):
        assert decorated.submit(-3).result(timeout=10) == 3
    from parallax import _pools

    sizes = {pooled.backend.workers for pooled in _pools._pools.values()}
    assert sizes == {1}
