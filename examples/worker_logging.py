"""Logging from process workers reaches your own handlers.

Shows:

* logging configured once, in the caller (``logging.basicConfig``): records
  that tasks log in process workers come back and go through it, with your
  format and your levels (``%(processName)s`` names the worker);
* a level set on one logger of the caller applies to the workers' records too;
* ``forward_logs=False``: the workers keep their records (an unconfigured
  worker prints warnings bare to its standard error, as plain Python does).

Run it: ``python examples/worker_logging.py`` (a second or two).
"""

from __future__ import annotations

import logging
import sys

import parallax

log = logging.getLogger("shop.orders")


def price(order: int) -> int:
    """Task: log at several levels, return a price."""
    log.debug("pricing order %d", order)  # below the caller's level for this logger: dropped
    if order % 4 == 0:
        log.warning("order %d: stock is low", order)
    log.info("order %d priced", order)
    return order * 10


def main() -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(levelname)-7s %(name)s [%(processName)s] %(message)s",
    )
    prices = parallax.map(price, range(1, 9), mode="process", workers=2)
    print(f"forwarded: {len(prices)} prices, total {sum(prices)}")

    logging.getLogger("shop").setLevel(logging.WARNING)  # the caller's levels apply
    parallax.map(price, range(1, 9), mode="process", workers=2)
    print("with shop at WARNING: only the warnings above came back")

    totals = parallax.map(price, range(1, 5), mode="process", workers=1, forward_logs=False)
    print(f"forward_logs=False: {sum(totals)} (the workers' warnings went to their stderr)")


if __name__ == "__main__":
    main()
