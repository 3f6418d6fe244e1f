"""Child process for the heatmap row: render --view heatmap of an n × n attention map.

Prints JSON: the render time and this process's peak RSS, and the bytes of the matrix itself.
"""

import io
import json
import resource
import sys
import time

import numpy as np

from attn_cli.render.common import RenderOptions, make_console
from attn_cli.render.pictures import render_heatmap
from attn_cli.trace import Trace, TraceStep

n = int(sys.argv[1])
w = np.random.default_rng(0).random((n, n), dtype=np.float32)
w /= w.sum(axis=1, keepdims=True)  # in place: a row-stochastic n × n matrix, n² × 4 bytes
labels = [f"t{i}" for i in range(n)]
trace = Trace(
    "x", labels, list(range(n)), {}, [TraceStep("W", "f", "d", w, labels, labels, "weights")]
)
console = make_console(color=True, width=120, file=io.StringIO())
t0 = time.perf_counter()
render_heatmap(console, trace, RenderOptions())
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(
    json.dumps(
        {
            "seconds": seconds,
            "peak": peak,
            "matrix": w.nbytes,
            "chars": len(console.file.getvalue()),
        }
    )
)
