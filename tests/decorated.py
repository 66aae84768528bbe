"""Decorated functions at module level (they pickle by reference)."""

from __future__ import annotations

import parallax


@parallax.parallel
def scored(doc: str, weight: int = 1) -> int:
    """Score one document."""
    return len(doc) * weight


@parallax.parallel(mode="thread", workers=2)
def scale(x: int) -> int:
    return x * 10
