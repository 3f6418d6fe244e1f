"""BLAS threads on a busy machine.

OpenBLAS's threads wait for work by spinning. When the machine already has at least as many
runnable processes as cores, those spinning threads compete with the other processes (and
with each other) for the CPU, and a model's many mid-sized products take several times longer
than on one thread: 128 SmolLM2 tokens took 84 s with two threads and 13–33 s with one at a
load of 15 on 2 cores, and a 128 × 576 by 576 × 1536 product 4× longer (measured). So a model
run uses one BLAS thread while the load average is at least the number of cores, and leaves
OpenBLAS as it is otherwise (on an idle machine its threads pay off). Anything other than
OpenBLAS, or a platform without /proc, is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

# numpy's own OpenBLAS (scipy-openblas, 64-bit ints), then other builds.
_NAMES = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@cache
def _openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """OpenBLAS's get/set thread count, from the library this process has loaded."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {
                line.split()[-1]
                for line in maps
                if "openblas" in line.rsplit("/", 1)[-1] and ".so" in line
            }
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _NAMES:
            if hasattr(lib, get) and hasattr(lib, set_):
                return getattr(lib, get), getattr(lib, set_)
    return None


def busy() -> bool:
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


@contextmanager
def one_thread_when_busy() -> Iterator[None]:
    """One BLAS thread inside the block while the machine is busy; restored after."""
    blas = _openblas() if busy() else None
    before = blas[0]() if blas is not None else 1
    if blas is not None and before > 1:
        blas[1](1)
    try:
        yield
    finally:
        if blas is not None and before > 1:
            blas[1](before)
