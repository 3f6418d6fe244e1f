"""Products on the free cores, with the same numbers whatever the machine's load.

Two facts shape this module (both measured; 2-core machines):
- OpenBLAS's own threads make a busy machine slower, not faster: each product waits for its
  slowest thread, and a thread that another process preempts holds every product up. 128
  SmolLM2 tokens took 84 s with two BLAS threads and 13–33 s with one at a load of 15; at a
  load of 1.7 (one other process busy) 1.0–8.5 s with two and 1.1–1.7 s with one.
- OpenBLAS's threads split a product where they like, and a product's last digits depend on the
  split: 128 × 576 by 576 × 1536 differs by up to 6e-5 between one thread and two. A thread
  count that follows the load would make two runs of the same command disagree.

So inside a model run (`threads_for_free_cores`) OpenBLAS runs on one thread, and the large
products (`matmul`) are cut into fixed pieces: a matrix's rows, or a stack's matrices, cut
into as many pieces as the machine has cores, at a fixed place that depends only on the
shapes. The pieces are computed by as many threads as there are free cores (numpy lets go of
the GIL inside BLAS), so the numbers are the same with one free core or all of them. Row cuts
fall on a multiple of ROW_ALIGN, a multiple of the row unroll of OpenBLAS's float32 kernels,
so each piece equals those rows of the whole product on one thread, bit for bit.

Free cores are the cores less what other processes use: the smaller of the 1-minute load
average and the other processes' runnable threads now (the load average alone still counts a
process that ended seconds ago, such as this program's previous run). Anything other than
OpenBLAS, or a platform without /proc, keeps its threads; the pieces still run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# numpy's own OpenBLAS (scipy-openblas, 64-bit ints), then other builds.
_NAMES = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)

# Row cuts fall on multiples of this: OpenBLAS's float32 kernels unroll 4, 6, 8, 12 or 24 rows
# of a row-major left operand (checked on its Haswell/Zen kernel: any multiple of 12 cut a
# product into pieces equal to the whole, bit for bit; 8 and 16 did not).
ROW_ALIGN = 24
# Below this many multiply-adds a product is not worth a thread's hand-over (about 20 µs).
MIN_WORK = 1 << 21
# Below this many values a row-by-row function (softmax, GELU) is not worth one either.
MIN_VALUES = 1 << 16

SAMPLES, SAMPLE_SECONDS = 8, 0.002  # how long others_running watches: about 16 ms


@cache
def _openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """OpenBLAS's get/set thread count, from the library numpy loads (numpy is imported at the
    top of this module, so its library is mapped by the time /proc/self/maps is read)."""
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


def cores() -> int:
    return os.cpu_count() or 1


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
    n = cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return n
    now = others_running()
    busy = load if now is None else min(load, now)
    return max(1, min(n, int(n - busy + 0.5)))


class _Run:
    """The threads of the model run in progress: how many compute pieces (0 outside a run:
    `matmul` is then a plain product), and the pool that lends the extra ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.workers = 0
        self.cores = 1  # the machine's, read once per run (os.cpu_count reads /sys)
        self.pool: ThreadPoolExecutor | None = None


_RUN = _Run()


def _forget_the_parents_threads() -> None:
    """In a forked child the pool's threads do not exist (fork copies only the calling thread):
    a new run there makes its own pool instead of waiting on threads that never run."""
    global _RUN
    _RUN = _Run()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_parents_threads)


@contextmanager
def threads_for_free_cores() -> Iterator[None]:
    """A model run: OpenBLAS on one thread, `matmul`'s pieces on the free cores (no more than
    OpenBLAS's threads before); restored after (re-entrant: an inner block keeps the outer
    one's choice)."""
    blas = _openblas()
    with _RUN.lock:
        outer = _RUN.depth == 0
        _RUN.depth += 1
    before = blas[0]() if blas is not None and outer else 1
    if outer:  # never more threads than OpenBLAS was given (OPENBLAS_NUM_THREADS=1: one)
        workers = min(free_cores(), before) if blas is not None else free_cores()
        if blas is not None and before > 1:
            blas[1](1)
        if workers > 1 and _RUN.pool is None:
            # imported here: the toy pipeline's start-up (attention.py imports this module)
            # would pay 7 ms for it
            from concurrent.futures import ThreadPoolExecutor

            _RUN.pool = ThreadPoolExecutor(cores() - 1, thread_name_prefix="attn-cli-matmul")
        _RUN.cores = cores()
        _RUN.workers = workers
    try:
        yield
    finally:
        with _RUN.lock:
            _RUN.depth -= 1
            if outer:
                _RUN.workers = 0
                if blas is not None and before > 1:
                    blas[1](before)


def row_cuts(rows: int, pieces: int) -> list[int]:
    """Where `rows` rows are cut into at most `pieces` pieces of near-equal size, each cut on a
    multiple of ROW_ALIGN: the boundaries, 0 and `rows` included."""
    blocks = -(-rows // ROW_ALIGN)
    pieces = max(1, min(pieces, blocks))
    inner = [min(rows, round(blocks * i / pieces) * ROW_ALIGN) for i in range(1, pieces)]
    return [0, *inner, rows]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; inside a model run, cut into fixed pieces computed on the free cores (see the
    module's text): a 2-D `a`'s rows, or a stack's matrices (3-D `a` and `b`, one each)."""
    workers = _RUN.workers
    if workers == 0:
        return a @ b
    if a.ndim == 2 and b.ndim == 2:
        cuts = row_cuts(a.shape[0], _RUN.cores)
    elif a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]:
        stack = a.shape[0]
        n = min(_RUN.cores, stack)
        cuts = [stack * i // n for i in range(n + 1)]
    else:
        return a @ b
    work = a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
    if len(cuts) == 2 or work < MIN_WORK:
        return a @ b
    out = np.empty((*a.shape[:-1], b.shape[-1]), dtype=np.result_type(a, b))

    def piece(i: int) -> None:
        s = slice(cuts[i], cuts[i + 1])
        np.matmul(a[s], b[s] if a.ndim == 3 else b, out=out[s])

    _on_workers(piece, len(cuts) - 1, workers)
    return out


def by_rows(
    fill: Callable[[np.ndarray, np.ndarray], object], x: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """`fill(x, out)` for a function that fills `out` from `x` one row (last axis) at a time,
    such as a softmax or an activation; inside a model run, in row pieces on the free cores.
    Each row's numbers do not depend on the pieces, so here the pieces follow the free cores.
    `out` may be `x` (in place). Returns `out`."""
    workers = _RUN.workers
    contiguous = x.flags.c_contiguous and out.flags.c_contiguous
    if workers <= 1 or x.ndim < 2 or x.size < MIN_VALUES or not contiguous:
        fill(x, out)
        return out
    rows, out_rows = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
    cuts = [len(rows) * i // workers for i in range(workers + 1)]

    def piece(i: int) -> None:
        s = slice(cuts[i], cuts[i + 1])
        fill(rows[s], out_rows[s])

    _on_workers(piece, workers, workers)
    return out


def _on_workers(piece: Callable[[int], None], pieces: int, workers: int) -> None:
    """piece(0) … piece(pieces − 1) on `workers` lanes, each taking every workers-th piece:
    lane 0 in this thread, the others on the run's pool (made when the run began with
    workers > 1)."""
    pool = _RUN.pool
    assert workers == 1 or pool is not None

    def lane(first: int) -> None:
        for i in range(first, pieces, workers):
            piece(i)

    others = [pool.submit(lane, k) for k in range(1, min(workers, pieces))] if pool else []
    lane(0)
    for f in others:
        f.result()
