"""@parallel: callable as before, plus .map/.imap/.starmap/.submit."""

from __future__ import annotations

import inspect
import pickle

import pytest

import parallax
from decorated import scale, scored
from parallax._serialize import dumps, loads


def test_bare_decorator_keeps_metadata() -> None:
    assert scored.__name__ == "scored"
    assert scored.__doc__ == "Score one document."
    assert inspect.signature(scored) == inspect.signature(scored.__wrapped__)
    assert list(inspect.signature(scored).parameters) == ["doc", "weight"]
    assert scored.__annotations__ == {"doc": "str", "weight": "int", "return": "int"}
    assert scored("abc") == 3


def test_decorator_with_keywords() -> None:
    assert scale(4) == 40
    assert scale.map(range(5)) == [0, 10, 20, 30, 40]
    with parallax.monitor() as monitor:
        scale.map(range(5))
    assert monitor.runs[-1].mode == "thread"  # the decorator default


def test_methods(parallax_mode: str) -> None:
    assert scored.map(["a", "bb"]) == [1, 2]
    assert list(scored.imap(["a", "bb"])) == [1, 2]
    assert scored.starmap([("a", 2), ("bb", 3)]) == [2, 6]
    assert scored.submit("abcd", weight=2).result(timeout=60) == 8


def test_call_keywords_override_decorator_defaults() -> None:
    with parallax.monitor() as monitor:
        scale.map(range(3), mode="serial")
    assert monitor.runs[-1].mode == "serial"


def test_decorated_functions_pickle_by_reference() -> None:
    assert pickle.loads(pickle.dumps(scored)) is scored
    # and work inside process workers
    assert parallax.map(scored, ["x", "yy"], mode="process") == [1, 2]


def test_decorated_closure_pickles_by_value() -> None:
    @parallax.parallel
    def local(x: int) -> int:
        return x + 1

    assert parallax.map(local, [1, 2], mode="process") == [2, 3]


def test_decorator_defaults_fill_the_keywords_a_call_leaves_out() -> None:
    @parallax.parallel(mode="serial", errors="skip", chunksize=1)
    def invert(x: int) -> float:
        return 1 / x

    with parallax.monitor() as monitor:
        assert invert.map([0, 1, 2]) == [1.0, 0.5]  # errors="skip" from the decorator
        assert list(invert.imap([0, 2])) == [0.5]
        assert invert.starmap([(0,), (4,)]) == [0.25]
        assert monitor.runs[-1].reason == "mode='serial' the decorator's default"
        # a keyword given as parallax.map's default still overrides the decorator's
        with pytest.raises(ZeroDivisionError):
            invert.map([0, 1], errors="raise")
        assert invert.map([1, 0], errors="return", mode="thread")[0] == 1.0
        assert monitor.runs[-1].mode == "thread"
        assert monitor.runs[-1].reason == "mode='thread' requested"


def test_a_misspelled_keyword_gets_the_error_parallax_map_gives() -> None:
    with pytest.raises(TypeError, match="did you mean 'chunksize'") as expected:
        parallax.map(scale, [1], chunk_size=3)
    with pytest.raises(TypeError) as got:
        scale.map([1], chunk_size=3)
    assert str(got.value) == str(expected.value)
    with pytest.raises(TypeError, match="did you mean 'retries'"):
        scale.imap([1], retires=2)
    with pytest.raises(TypeError, match="did you mean 'ordered'"):
        scale.starmap([(1,)], orderd=False)
    with pytest.raises(ValueError, match="unknown mode 'proces' \\(did you mean 'process'\\?\\)"):
        scale.map([1], mode="proces")


def test_a_decorated_function_sent_by_value_keeps_its_defaults() -> None:
    @parallax.parallel(mode="serial", errors="return")
    def half(x: int) -> float:
        return x / 2 if x else 1 / x

    copied = loads(dumps(half))
    results = copied.map([0, 4])
    assert isinstance(results[0], ZeroDivisionError)
    assert results[1] == 2.0
    assert copied.map(iterable=[2]) == [1.0]  # the iterable by name, as before
