"""The public names: exported once, importable, documented."""

from __future__ import annotations

import inspect

import parallax

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


def test_import_does_not_import_heavy_modules() -> None:
    import subprocess
    import sys

    code = "import sys, parallax; print('distributed' in sys.modules, 'asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split()[0] == "False"
