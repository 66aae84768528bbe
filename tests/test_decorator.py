"""@parallel: callable as before, plus .map/.imap/.starmap/.submit."""

from __future__ import annotations

import inspect
import pickle

import parallax
from decorated import scale, scored


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
