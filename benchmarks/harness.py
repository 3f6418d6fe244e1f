"""What every benchmark shares: one child process's wall time, CPU time and peak memory, and
the sides of a comparison run in turn.

A child's peak is its ru_maxrss from os.wait4 (Linux: KiB). The sides alternate within each
round, so a change in the machine's load during the runs falls on every side alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PY = sys.executable


@dataclass(frozen=True)
class ChildRun:
    """One child process: wall seconds, CPU seconds (user + system), peak RSS and its stdout."""

    seconds: float
    cpu_seconds: float
    peak_bytes: int
    stdout: str

    def last_json(self) -> Any:
        """The JSON object on the last line the child printed."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run `cmd` to its end and measure it; a failed child raises with the end of its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, error = out.read().decode(), err.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} … failed ({code}): {error.strip()[-500:]}")
    return ChildRun(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, text)


def alternate_children(
    sides: dict[str, list[str]],
    runs: int,
    env: dict[str, str] | None = None,
    warmup: int = 1,
    each: Callable[[str, ChildRun], None] | None = None,
) -> dict[str, list[ChildRun]]:
    """Every side's runs: `warmup` unmeasured rounds (file cache, imports, bytecode), then `runs`
    rounds of every side in turn; `each(side, run)` sees every measured run as it ends."""
    for _ in range(warmup):
        for cmd in sides.values():
            run_child(cmd, env)
    results: dict[str, list[ChildRun]] = {side: [] for side in sides}
    for _ in range(runs):
        for side, cmd in sides.items():
            run = run_child(cmd, env)
            results[side].append(run)
            if each is not None:
                each(side, run)
    return results


def median_seconds(runs: list[ChildRun]) -> float:
    return statistics.median(r.seconds for r in runs)


def median_cpu_seconds(runs: list[ChildRun]) -> float:
    return statistics.median(r.cpu_seconds for r in runs)


def max_peak_bytes(runs: list[ChildRun]) -> int:
    return max(r.peak_bytes for r in runs)


def median_peak_bytes(runs: list[ChildRun]) -> float:
    return statistics.median(r.peak_bytes for r in runs)


def thread_env(threads: int | None) -> dict[str, str]:
    """This process's environment with every BLAS's thread count set to `threads` (if given),
    bytecode writing allowed: the warm-up round is to leave attn-cli's compiled modules behind,
    as an installed package has them (and transformers, installed, does), so the measured runs
    do not compile its sources each time (PYTHONDONTWRITEBYTECODE forbade it: 0.2–0.4 s)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def print_versus(ours: list[ChildRun], theirs: list[ChildRun]) -> None:
    """attn-cli's and transformers' median wall and CPU time and largest peak, and the ratios."""
    t_o, c_o, m_o = median_seconds(ours), median_cpu_seconds(ours), max_peak_bytes(ours) / 2**20
    t_t, c_t = median_seconds(theirs), median_cpu_seconds(theirs)
    m_t = max_peak_bytes(theirs) / 2**20
    print(f"attn-cli      {t_o:.2f} s (CPU {c_o:.2f} s), {m_o:,.0f} MiB")
    print(f"transformers  {t_t:.2f} s (CPU {c_t:.2f} s), {m_t:,.0f} MiB")
    print(
        f"ratio         {t_t / t_o:.1f}× faster ({c_t / c_o:.1f}× less CPU), {m_o / m_t:.2f}× memory"
    )


def versus_transformers(ours: list[ChildRun], ref: list[ChildRun]) -> dict[str, float]:
    """A JSON row's shared figures: each side's median wall and CPU time, largest peak, ratios."""
    ours_t, ref_t = median_seconds(ours), median_seconds(ref)
    ours_c, ref_c = median_cpu_seconds(ours), median_cpu_seconds(ref)
    ours_m, ref_m = max_peak_bytes(ours), max_peak_bytes(ref)
    return {
        "attn_cli_s": round(ours_t, 2),
        "transformers_s": round(ref_t, 2),
        "speedup": round(ref_t / ours_t, 2),
        "attn_cli_cpu_s": round(ours_c, 2),
        "transformers_cpu_s": round(ref_c, 2),
        "cpu_ratio": round(ref_c / ours_c, 2),
        "attn_cli_peak_mib": round(ours_m / 2**20),
        "transformers_peak_mib": round(ref_m / 2**20),
        "memory_ratio": round(ours_m / ref_m, 3),
    }


def bench_dir(name: str) -> Path:
    """Where a benchmark's checkpoint is written once: ATTN_CLI_BENCH_DIR (default
    /tmp/attn-cli-bench) / name."""
    return Path(os.environ.get("ATTN_CLI_BENCH_DIR", "/tmp/attn-cli-bench")) / name


def write_random_bf16_safetensors(
    path: Path, specs: list[tuple[str, tuple[int, ...]]], std: Callable[[str], float]
) -> None:
    """Random bf16 weights (normal, standard deviation std(name); norms 1), written in chunks
    so writing never holds more than a few MB, and renamed into place when complete."""
    import numpy as np

    header, offset = {}, 0
    for name, shape in specs:
        size = 2 * int(np.prod(shape))
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(0)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape in specs:
            count = int(np.prod(shape))
            if name.endswith("norm.weight"):
                f.write((np.ones(count, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes())
                continue
            scale = np.float32(std(name))
            for start in range(0, count, 1 << 22):
                n = min(1 << 22, count - start)
                x = rng.standard_normal(n, dtype=np.float32) * scale
                f.write((x.view(np.uint32) >> 16).astype("<u2").tobytes())
    tmp.rename(path)


def code_versus_transformers(
    name: str, write_checkpoint: Callable[[Path], None], ours: str, theirs: str
) -> None:
    """The whole of a benchmark that times two Python programs, attn-cli's and transformers',
    each given the checkpoint directory as argv[1] (flags --runs, --threads)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    d = bench_dir(name)
    write_checkpoint(d)
    sides = {"attn-cli": [PY, "-c", ours, str(d)], "transformers": [PY, "-c", theirs, str(d)]}
    runs = alternate_children(sides, args.runs, thread_env(args.threads))
    print_versus(runs["attn-cli"], runs["transformers"])


def open_decoder(d: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A decoder checkpoint directory as attn-cli opens it: its family (with an LM head), its
    weights (every shape checked) and its config."""
    from attn_cli.models.registry import family_for
    from attn_cli.models.weights import SafetensorsWeights

    cfg = json.loads((d / "config.json").read_text())
    fam = family_for(cfg["model_type"])
    assert fam is not None and fam.logits is not None
    w = SafetensorsWeights(d, fam.anchor, fam.rename)
    fam.check(w, cfg)
    return fam, w, cfg


def next_token_top5(logits: Any) -> dict[str, list]:
    """The 5 likeliest next tokens and their probabilities, from one position's logits (numpy)."""
    import numpy as np

    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:5]
    return {"top": top.tolist(), "p": p[top].tolist()}


def transformers_top5(d: Path, ids: list[int]) -> tuple[Any, Any]:
    """transformers' eager float32 forward pass of the checkpoint in `d` on `ids`, every map
    returned; prints the next token's top 5 as JSON (as next_token_top5) and returns the model
    and its output."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    p = torch.softmax(out.logits[0, -1], -1)
    top = torch.topk(p, 5)
    print(json.dumps({"top": top.indices.tolist(), "p": top.values.tolist()}))
    return model, out
