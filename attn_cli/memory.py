"""What a run will hold in memory, counted before it starts: an input this machine cannot hold is
refused with one line naming its size and what keeps it small, instead of being killed by the
kernel with no message at all.

An estimate is the process's resident size now plus every buffer the run then holds at its peak,
counted from the code that allocates them (attention.py, projections.py, narrate.py, export.py):
which n × n matrices exist at the same time, the n × d ones beside them, and the temporaries of
the checks and the export. It is compared with the measured peak RSS in benchmarks/run.py
(row `memory_estimate`) and bounded from above by tests/test_memory.py. A run is admitted while
its estimate stays within USABLE of the machine's memory: the rest is for the system and other
processes.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

from attn_cli.errors import InputError

USABLE = 0.85
# Allocator slack and the small arrays nobody counts one by one (labels, step metadata, Rich).
SLACK = 1.03
SMALL = 16 * 2**20
# What a number costs while export.json_chunks turns a block of rows into text: up to 16
# characters for a float32, 22 for a float64, held up to five times over (orjson's growing
# buffer and its bytes, the slice, the joined chunk: measured with tracemalloc).
JSON_CHARACTERS = {4: 16, 8: 22}
JSON_COPIES = 5
JSON_ROWS = 256  # export.JSON_ROWS_PER_CHUNK


def total_memory() -> int | None:
    """This machine's memory, or the container's limit when that is smaller; None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def resident_memory() -> int:
    """The resident size of this process now (its peak so far where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# glibc's mallopt parameters, and what attn-cli sets them to (reuse_freed_memory)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 256 * 2**20
HEAP_LIMIT = 32 * 2**20  # glibc's largest mmap threshold on 64-bit


def reuse_freed_memory() -> bool:
    """Let glibc's malloc reuse freed buffers instead of returning them to the kernel at once.

    A model run dequantises and frees a few MiB of weights per tensor, layer after layer. By
    default each such buffer is a fresh mapping (or the heap is trimmed after it), so every
    new one is page-faulted and zeroed again: a third of SmolLM2's page faults and 0.17 s of
    its 1.1 s of CPU (measured). Buffers below 32 MiB now come from the heap, and up to
    256 MiB of freed heap stays mapped for the next ones; larger buffers (n × n maps of long
    inputs) are still mappings of their own, returned when freed. The peak resident size is
    unchanged. For the console script only (a library must not change its host's allocator);
    False where there is no glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_LIMIT)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_FREED)
    )


def _finish(buffers: int) -> int:
    return int(buffers * SLACK) + SMALL


def _transient(n: int, cols: int, itemsize: int) -> int:
    """The largest short-lived buffer after the compute: check_finite's n × cols booleans or a
    JSON block of rows as text."""
    return max(n * cols, min(n, JSON_ROWS) * cols * JSON_COPIES * JSON_CHARACTERS[itemsize])


def toy_bytes(n: int, d: int, itemsize: int, scale: bool) -> int:
    """The parameter-free pipeline (attention.toy_self_attention): W_raw, (W_scaled) and W
    (row_softmax's one temporary becomes W) are n × n; X in the compute dtype, Kᵀ's copy and Y
    are n × d."""
    squares = (3 if scale else 2) * n * n * itemsize
    vectors = 3 * itemsize * n * d  # X in float32 (from FLOAT32_FROM tokens), Kᵀ, Y
    return _finish(squares + vectors + _transient(n, n, itemsize))


def projection_bytes(d: int, heads: int, d_k: int) -> int:
    """Seeded W_q, W_k, W_v (d × H·d_k) and W_o (H·d_k × d, several heads), float64; drawing the
    last one holds PCG64's raw bits, their float64 copy and the scaled result at once."""
    one = d * heads * d_k * 8
    return _finish((4 if heads > 1 else 3) * one + 3 * one)


def qkv_bytes(
    n: int, d: int, heads: int, d_k: int, d_v: int, d_o: int, causal: bool, temperature: float
) -> int:
    """The Q/K/V pipeline once its projections exist (attention.multi_head_attention, float64):
    X_norm, Q, K, V, Kᵀ's copy, Y, Y_concat and O beside the H × n × n stack of W_raw, W_scaled,
    (W_masked), W, and the logits / T temporary."""
    squares = heads * n * n * 8 * (3 + causal + (temperature != 1.0))
    vectors = n * 8 * (d + 3 * heads * d_k + 2 * heads * d_v + d_o)
    mask = n * n if causal else 0
    return _finish(squares + vectors + mask + _transient(n, n, 8))


def model_bytes(
    n: int,
    heads: int,
    layers_kept: int,
    kinds_kept: int,
    layers: int,
    parameters: int,
    methods: bool,
) -> int:
    """A checkpoint run (float32). Each layer computes H × n × n W_raw, W_scaled, W_masked and W
    (and W_capped with its temporary, under a soft-cap: 6 at most); a kept step is a view of its
    layer's stack, so every kept kind holds that whole stack until the trace is released. One
    layer's weights are dequantised at a time (counted three times over for the transposed and
    cast copies); pages of the weight files read through a memory map are not counted, since
    the kernel can drop them. Methods (rollout, flow …) keep about two float64 n × n matrices
    per layer."""
    stack = heads * n * n * 4
    squares = (layers_kept * kinds_kept + 6) * stack
    mask = n * n
    layer_weights = 3 * 4 * parameters // max(layers, 1)
    method = 2 * layers * n * n * 8 if methods else 0
    return _finish(squares + mask + layer_weights + method + _transient(n, n, 4))


def gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def check_fits(need: int, size: str, advice: str) -> None:
    """Refuse a run whose estimate (`need` bytes beyond what this process holds now) exceeds
    USABLE of this machine's memory. `size` says what is large ('the text is 40,000 tokens'),
    `advice` what keeps it small."""
    have = total_memory()
    if have is None or fits(need):
        return
    peak = resident_memory() + need
    raise InputError(
        f"{size}: the run would need about {gib(peak)} of memory at its peak, more than "
        f"{USABLE:.0%} of this machine's {gib(have)}; {advice}"
    )


def fits(need: int) -> bool:
    """Whether `need` bytes beyond what this process holds now stay within USABLE of this
    machine's memory (True when the machine's memory is unknown)."""
    have = total_memory()
    return have is None or resident_memory() + need <= USABLE * have
