"""The large-data tasks (``bench_large_data.py``): numpy float64 in, out, or bound in.

Every task function is at the top level, so that every peer ships it to its
workers by reference and they import it back. The three cases:

* ``fft_inputs``: many 4 MB arrays go out, a float comes back (input traffic);
* ``bound_array``: one 256 MB array bound into the function with
  ``functools.partial``, small items (a large object reaching every worker);
* ``fresh_results``: small items go out, a fresh 32 MB array comes back each
  (result traffic).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .tasks import MEDIUM_ITERATIONS, spin, spin_expected

MB = 2**20
FLOAT = 8  # bytes of a float64
#: float64 values of one ``fft_inputs`` array (4 MB): its rfft takes about 6 ms on an
#: idle core (more when the array is not in cache)
FFT_VALUES = 4 * MB // FLOAT
#: float64 values of the ``bound_array`` array (256 MB)
BOUND_VALUES = 256 * MB // FLOAT
#: the pure-Python part of a ``bound_array`` item, in seconds (the issue's case)
BOUND_SPIN_SECONDS = 0.002
#: loop iterations of it where nothing else says: a fifth of ``cpu_medium``'s,
#: about 2 ms on the reference machine (0.85 ms on the 2-core benchmark machine)
BOUND_SPIN = MEDIUM_ITERATIONS // 5
#: the driver calibrates the count on the machine it runs on
#: (:func:`calibrate_bound_spin`) and hands it to every measurement through
#: this variable: every peer of one run then does the same work
BOUND_SPIN_VARIABLE = "BENCH_BOUND_SPIN"
#: float64 values of one ``fresh_results`` result (32 MB)
RESULT_VALUES = 32 * MB // FLOAT
#: relative tolerance of the FFT check: the same arithmetic may take other
#: SIMD paths on a differently aligned buffer (shared memory, memmap, pickle)
FFT_TOLERANCE = 1e-9

#: what is wrong with a result list (None: nothing)
Check = Callable[[list[Any]], str | None]


# -- fft_inputs ------------------------------------------------------------------------


def fft_task(values: np.ndarray) -> float:
    """The largest magnitude in the array's real FFT.

    Not the norm: ``np.linalg.norm`` calls BLAS, which may start threads of
    its own in every worker and blur what is measured.
    """
    return float(np.abs(np.fft.rfft(values)).max())


def fft_arrays(count: int, values: int = FFT_VALUES) -> list[np.ndarray]:
    """``count`` distinct random arrays of ``values`` float64, the same on every call."""
    rng = np.random.default_rng(15)
    return [rng.standard_normal(values) for _ in range(count)]


def fft_check(arrays: list[np.ndarray]) -> Check:
    expected = [fft_task(array) for array in arrays]

    def check(results: list[Any]) -> str | None:
        if len(results) != len(expected):
            return f"{len(results)} results instead of {len(expected)}"
        for index, (got, wanted) in enumerate(zip(results, expected, strict=True)):
            if not math.isclose(got, wanted, rel_tol=FFT_TOLERANCE):
                return f"item {index}: {got!r} instead of {wanted!r}"
        return None

    return check


# -- bound_array -----------------------------------------------------------------------


def slice_task(values: np.ndarray, index: int, slices: int, iterations: int = BOUND_SPIN) -> float:
    """The sum of the ``index``-th of ``slices`` slices of ``values``, plus
    ``iterations`` of pure Python (about 2 ms, as calibrated)."""
    width = len(values) // slices
    total = float(values[index * width:(index + 1) * width].sum())
    return total + spin(index, iterations)


def bound_spin() -> int:
    """The iterations of a ``bound_array`` item's pure-Python part: the driver's
    calibration (:data:`BOUND_SPIN_VARIABLE`), else :data:`BOUND_SPIN`."""
    return int(os.environ.get(BOUND_SPIN_VARIABLE) or BOUND_SPIN)


def spin_seconds(iterations: int, repeats: int = 15) -> float:
    """How long :func:`spin` takes for ``iterations`` here (the fastest of
    ``repeats``: the least disturbed by other processes)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        spin(0, iterations)
        best = min(best, time.perf_counter() - started)
    return best


def calibrate_bound_spin(seconds: float = BOUND_SPIN_SECONDS) -> int:
    """The iterations that take ``seconds`` of pure Python on this machine."""
    spin(0, BOUND_SPIN)  # (warm)
    return max(1, round(BOUND_SPIN * seconds / spin_seconds(BOUND_SPIN)))


def bound_values(values: int = BOUND_VALUES) -> np.ndarray:
    """0.0, 1.0, 2.0, ...: every slice sum is an exact integer, known in closed form."""
    return np.arange(values, dtype=np.float64)


_kept_values: dict[int, np.ndarray] = {}


def kept_bound_values(values: int = BOUND_VALUES) -> np.ndarray:
    """:func:`bound_values`, the same array object on every call in this process
    (the ``bound_array_again`` case: a second run over the same array)."""
    if values not in _kept_values:
        _kept_values[values] = bound_values(values)
    return _kept_values[values]


def bound_fn(count: int, values: int = BOUND_VALUES,
             array: np.ndarray | None = None) -> functools.partial[float]:
    """``slice_task`` with the array (``array``, else a new one) and the
    calibrated spin bound in: items are 0 .. count - 1."""
    bound = bound_values(values) if array is None else array
    return functools.partial(slice_task, bound, slices=count, iterations=bound_spin())


def slice_check(count: int, values: int = BOUND_VALUES) -> Check:
    iterations = bound_spin()
    spun = [spin_expected(index, iterations) for index in range(count)]
    width = values // count
    expected = [float((2 * index * width + width - 1) * width // 2) + spun[index]
                for index in range(count)]

    def check(results: list[Any]) -> str | None:
        if results != expected:
            wrong = next((index for index, (got, wanted)
                          in enumerate(zip(results, expected, strict=False)) if got != wanted),
                         min(len(results), len(expected)))
            return f"item {wrong} (of {len(results)}) differs from the closed form"
        return None

    return check


# -- fresh_results ---------------------------------------------------------------------


def fresh_task(index: int, values: int = RESULT_VALUES) -> np.ndarray:
    """A new array ``index, index + 1, ...`` of ``values`` float64."""
    return np.arange(values, dtype=np.float64) + index


def fresh_check(count: int, values: int = RESULT_VALUES) -> Check:
    def check(results: list[Any]) -> str | None:
        if len(results) != count:
            return f"{len(results)} results instead of {count}"
        for index, array in enumerate(results):
            if not isinstance(array, np.ndarray) or array.shape != (values,):
                return f"item {index}: not an array of {values} values"
            # exact: integers below 2**53 add up exactly in float64
            if float(array.sum()) != values * (values - 1) / 2 + values * index:
                return f"item {index}: wrong sum"
        return None

    return check
