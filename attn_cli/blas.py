"""BLAS threads on a busy machine.

OpenBLAS's threads wait for work by spinning. When another process holds a core, a spinning
thread competes with it (and with its sibling threads) for the CPU, and a model's many
mid-sized products take several times longer than on one thread: 128 SmolLM2 tokens took 84 s
with two threads and 13–33 s with one at a load of 15 on 2 cores, and a 128 × 576 by 576 × 1536
product 4× longer (measured); at a load of 1.7 (one other process busy) the same run took
1.0–8.5 s with two threads and 1.1–1.7 s with one, and on an idle machine two threads gain
nothing on it. So a model run
uses only as many BLAS threads as the machine has free cores: the cores less what other
processes use, rounded, at least one (on 2 cores: two threads only while that is below 0.5).
What other processes use is the smaller of the 1-minute load average and the mean count of
other runnable threads over a few milliseconds now: the load average alone still counts a
process that ended a few seconds ago, such as this program's previous run (SmolLM2's 128
tokens took 0.82 s on one thread at a load of 0.7 from its own earlier runs, and 0.71 s on
two; llama.cpp 0.51 s). Anything other than OpenBLAS, or a platform without /proc, is left
alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

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


SAMPLES, SAMPLE_SECONDS = 8, 0.002  # how long others_running watches: about 16 ms


def others_running() -> float | None:
    """The mean number of runnable threads of other processes over a few milliseconds: the
    machine's running count less this process's own running threads; None without /proc."""
    seen = []
    for i in range(SAMPLES):
        if i:
            time.sleep(SAMPLE_SECONDS)
        running = _running_threads()
        if running is None:
            return None
        seen.append(max(0, running - max(_own_running_threads(), 1)))
    return sum(seen) / len(seen)


def _running_threads() -> int | None:
    """Runnable threads on the machine now (/proc/loadavg's fourth field, running/total)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _own_running_threads() -> int:
    """This process's threads in state R (running or runnable) now."""
    own = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            own += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return own


def free_cores() -> int:
    """The cores no other process is using: the core count less the smaller of the 1-minute
    load average and the other processes' runnable threads now, rounded, at least 1."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    now = others_running()
    busy = load if now is None else min(load, now)
    return max(1, min(cores, int(cores - busy + 0.5)))


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
