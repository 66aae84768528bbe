"""The public names: exported once, importable, documented."""

from __future__ import annotations

import inspect
import pydoc
import typing
from pathlib import Path

import pytest

import parallax
from conftest import Backend
from faults import FailOnce, InjectedError
from parallax._config import COMMON_KEYWORDS
from parallax._launch import CallOptions

CONTRACT = {
    "map", "imap", "starmap", "amap", "parallel", "Executor", "using", "plan", "monitor",
    "Stats", "register_backend", "ParallaxError", "TaskTimeoutError", "WorkerCrashedError",
    "SerializationError",
}


def test_all_matches_the_module() -> None:
    assert isinstance(parallax.__all__, tuple)
    assert len(set(parallax.__all__)) == len(parallax.__all__)
    for name in parallax.__all__:
        assert hasattr(parallax, name), name
    public = {name for name in vars(parallax) if not name.startswith("_")}
    submodules = {name for name in public if inspect.ismodule(getattr(parallax, name))}
    assert public - submodules - set(parallax.__all__) == set()


def test_contract_names_are_exported() -> None:
    assert set(parallax.__all__) >= CONTRACT


def test_public_callables_have_docstrings() -> None:
    for name in parallax.__all__:
        obj = getattr(parallax, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


def test_map_signature_matches_the_design() -> None:
    parameters = inspect.signature(parallax.map).parameters
    assert list(parameters)[:2] == ["fn", "iterable"]
    expected = {
        "mode": "auto", "workers": None, "chunksize": "auto", "ordered": True, "timeout": None,
        "errors": "raise", "progress": False, "initializer": None, "initargs": (),
    }
    for name, default in expected.items():
        assert parameters[name].default == default, name
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("api", ["map", "imap", "starmap", "amap"])
def test_every_common_keyword_is_a_typed_parameter(api: str) -> None:
    """IDEs and help() show each keyword a call accepts: none hides in **options."""
    function = getattr(parallax, api)
    parameters = inspect.signature(function).parameters
    hints = typing.get_type_hints(function)
    defaults = CallOptions()
    for name in {"mode", *COMMON_KEYWORDS}:
        parameter = parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert name in hints, name
        if name != "mode":  # the call's "auto" is CallOptions' None (not given)
            assert parameter.default == getattr(defaults, name), name
    assert list(parameters)[-1] == "options"  # backend options still travel as **options


@pytest.mark.parametrize("method", ["map", "imap", "starmap"])
def test_parallel_function_methods_take_the_keywords_of_their_function(method: str) -> None:
    """``@parallel``'s ``.map`` & co. show what ``parallax.map`` & co. do (IDEs, help())."""
    from decorated import scored

    bound = getattr(scored, method)
    own = inspect.signature(bound).parameters
    public = inspect.signature(getattr(parallax, method)).parameters
    assert list(own) == list(public)[1:]  # all but fn
    for name, parameter in own.items():
        if parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:  # not the iterable
            assert parameter == public[name], name  # kind, default and annotation
    hints = typing.get_type_hints(bound)
    assert {"mode", *COMMON_KEYWORDS} <= set(hints)
    assert "max_tasks_per_worker: 'int | None' = None" in pydoc.render_doc(bound)


def test_parallel_keyword_form_lists_every_common_keyword() -> None:
    overloads = typing.get_overloads(parallax.parallel)
    keyword_form = inspect.signature(overloads[-1]).parameters
    for name in {"mode", *COMMON_KEYWORDS}:
        assert keyword_form[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_typed_keywords_work_in_every_mode(backend: Backend, tmp_path: Path) -> None:
    flaky = FailOnce("raise", 2, str(tmp_path / "failed-once"))
    with parallax.monitor() as mon:
        result = backend.map(flaky, [1, 2, 3], retries=2, retry_on=InjectedError, backoff=0.0,
                             max_tasks_per_worker=100, record_tasks=False)
    assert result == [10, 20, 30]
    assert mon.runs[-1].retried == 1
    assert not mon.runs[-1].records_kept


def test_import_does_not_import_heavy_modules() -> None:
    import subprocess
    import sys

    code = "import sys, parallax; print('distributed' in sys.modules, 'asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split()[0] == "False"


def test_a_first_serial_call_does_not_import_multiprocessing() -> None:
    """The stdlib-compatible errors subclass concurrent.futures.process's,
    which pulls in multiprocessing: they are imported where they are raised,
    not on every first call (tens of milliseconds of start-up)."""
    import subprocess
    import sys

    code = ("import sys, parallax; parallax.map(abs, range(10)); "
            "parallax.map(abs, range(10), mode='thread'); "
            "print(sorted(m for m in sys.modules if m.startswith('multiprocessing')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
