"""``@parallax.parallel`` in application code, and ``parallax.using("serial")`` in its tests.

Shows:

* ``@parallel(mode="process")``: the function stays an ordinary function
  (plain calls, name, docstring, signature) and gains ``.map``, ``.imap``,
  ``.starmap`` and ``.submit``, which default to process mode;
* per-call overrides of the decorator's defaults (``score.map(docs, mode="thread")``);
* a test written the way a test suite would: ``with parallax.using("serial")``
  forces every parallax call inside, decorator defaults and explicit
  ``mode=`` included, so tests are deterministic, debuggable (breakpoints,
  ``pdb``) and start no processes. ``PARALLAX_MODE=serial pytest`` does the
  same for a whole test run.

Run it: ``python examples/decorator_and_tests.py`` (a few seconds on 2 cores).
"""

from __future__ import annotations

import inspect
import re
from collections import Counter

import parallax

DOCUMENTS = [
    "the quick brown fox jumps over the lazy dog " * 200,
    "parallel maps run one function over many inputs " * 200,
    "a process pool suits work that keeps the CPU busy " * 200,
    "threads suit work that mostly waits for the network " * 200,
] * 4


@parallax.parallel(mode="process")
def score(document: str, *, keyword: str = "the") -> int:
    """How often ``keyword`` occurs in ``document``, as a whole word."""
    words = Counter(re.findall(r"[a-z]+", document.lower()))
    return words[keyword]


def test_score_map_matches_plain_calls() -> None:
    """A unit test: same results, serially, whatever the decorator says."""
    with parallax.using("serial"), parallax.monitor() as mon:
        assert score.map(DOCUMENTS[:3]) == [score(document) for document in DOCUMENTS[:3]]
        assert score.map(DOCUMENTS[:2], mode="process") == [400, 0]  # using() wins
    assert [run.mode for run in mon.runs] == ["serial", "serial"]


def test_score_is_still_a_function() -> None:
    assert score("the cat and the hat") == 2
    assert score("no match here", keyword="match") == 1
    assert score.__name__ == "score"
    assert score.__doc__ is not None and "keyword" in score.__doc__
    assert list(inspect.signature(score).parameters) == ["document", "keyword"]


def main() -> None:
    # Application code: the decorator's default mode is "process".
    with parallax.monitor() as mon:
        counts = score.map(DOCUMENTS)
        by_thread = score.map(DOCUMENTS, mode="thread")  # a per-call override
    assert counts == by_thread == [score(document) for document in DOCUMENTS]
    print(f"score.map over {len(DOCUMENTS)} documents: {counts[:4]} ...")
    print(f"runs: {[run.mode for run in mon.runs]} "
          f"(decorator default, then the per-call override)")

    future = score.submit(DOCUMENTS[2], keyword="process")
    print(f"score.submit(...) -> {type(future).__name__}, result {future.result(timeout=60)}")

    # The tests, run here by hand; under pytest they would be collected as is.
    for test in (test_score_map_matches_plain_calls, test_score_is_still_a_function):
        test()
        print(f"{test.__name__}: passed")


if __name__ == "__main__":
    main()
