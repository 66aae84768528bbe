"""Progress: item-accurate, in plain text, through tqdm, or to a callable."""

from __future__ import annotations

import importlib.util

import pytest

import parallax
from conftest import Backend
from helpers import fail_on


def test_callable_receives_item_counts(backend: Backend) -> None:
    updates: list[parallax.ProgressUpdate] = []
    backend.map(fail_on({5}), range(120), progress=updates.append, errors="skip",
                chunksize=7, ordered=False)
    assert updates[-1].finished
    assert updates[-1].done == 120 and updates[-1].total == 120
    counts = [update.done for update in updates]
    assert counts == sorted(counts)  # monotonic, item-accurate
    assert all(update.rate >= 0 for update in updates)


def test_total_is_none_for_generators() -> None:
    updates: list[parallax.ProgressUpdate] = []
    parallax.map(abs, (x for x in range(50)), mode="thread", progress=updates.append)
    assert updates[-1].done == 50 and updates[-1].total is None and updates[-1].eta is None


def test_plain_progress_line_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    parallax.map(abs, range(300), mode="thread", progress=True)
    err = capsys.readouterr().err
    assert "300/300 items" in err and "100.0%" in err and "items/s" in err


@pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="tqdm not installed")
def test_tqdm_progress(capsys: pytest.CaptureFixture[str]) -> None:
    parallax.map(abs, range(250), mode="thread", progress=True)
    err = capsys.readouterr().err
    assert "250/250" in err


def test_bad_progress_value() -> None:
    with pytest.raises(TypeError, match="progress"):
        parallax.map(abs, [1], progress="yes")  # type: ignore[arg-type]
