"""parallax's benchmark suite: peers side by side, ratios in one run.

Run it with ``python benchmarks/run.py`` (see ``benchmarks/README.md``). It is
not part of the test suite.
"""
