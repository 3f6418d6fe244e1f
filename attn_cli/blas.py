"""BLAS threads on a busy machine.

OpenBLAS's threads wait for work by spinning. When another process holds a core, a spinning
thread competes with it (and with its sibling threads) for the CPU, and a model's many
mid-sized products take several times longer than on one thread: 128 SmolLM2 tokens took 84 s
with two threads and 13–33 s with one at a load of 15 on 2 cores, and a 128 × 576 by 576 × 1536
product 4× longer (measured); at a load of 1.7 (one other process busy) the same run took
1.0–8.5 s with two threads and 1.1–1.7 s with one, and on an idle machine two threads gain
nothing on it. So a model run
uses only as many BLAS threads as the machine has free cores: the cores less the load average,
rounded, at least one (on 2 cores: two threads only while the load is below 0.5). Anything
other than OpenBLAS, or a platform without /proc, is left alone.
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
    """OpenBLAS's get/set thread count, from the library numpy loads (imported here first: a
    caller that has not imported numpy yet would find no library and, this being cached, run
    every later product on all of OpenBLAS's threads)."""
    import ctypes

    import numpy  # noqa: F401  (loads its OpenBLAS)

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


def free_cores() -> int:
    """The cores no other process is using: the core count less the 1-minute load average,
    rounded, at least 1."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


@contextmanager
def threads_for_free_cores() -> Iterator[None]:
    """At most one BLAS thread per free core inside the block (never more than before);
    restored after."""
    blas = _openblas()
    before = blas[0]() if blas is not None else 1
    wanted = min(before, free_cores())
    if blas is not None and wanted < before:
        blas[1](wanted)
    try:
        yield
    finally:
        if blas is not None and wanted < before:
            blas[1](before)
