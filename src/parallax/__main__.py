"""``python -m parallax``: the same command line as the ``parallax`` script."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
