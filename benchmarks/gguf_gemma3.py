"""Benchmark row: a Gemma 3 270M-shaped GGUF (Q8_0, 262,144-piece SentencePiece vocabulary,
random weights: benchmarks/make_gemma3_270m.py), 145 tokens, every layer and head, against
llama.cpp on the same file, same run.

    python benchmarks/gguf_gemma3.py             # 3 alternating runs of each side
    python benchmarks/gguf_gemma3.py --runs 5

Sides, each a fresh process on the same 145 token ids (load included):

  attn-cli   `attn-cli explain TEXT --model FILE --layer all --head all --steps W --npz
             /dev/null`: every attention map (18 layers × 4 heads) computed and kept; the
             tokenizer's merges come from the user's cache after the first run (the warm-up)
  llama.cpp  llama_cpp.Llama(FILE, n_ctx=256).eval(ids), loaded with use_extra_bufts off
             (tests/llama_cpp_safe.py): the floor a user already has

Reported: medians of whole-process wall time and peak RSS, the ratio, and the first run of
attn-cli on this file with no cached merges. Target: ≤ 2× llama.cpp's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_TOKENS = 145
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from gguf_smollm2 import LLAMA_CPP, attn_cli_command  # noqa: E402
from harness import PY, alternate_children, median_peak_bytes, median_seconds, run_child  # noqa: E402
from make_gemma3_270m import gemma3_270m  # noqa: E402


def text_of(path: Path, count: int) -> tuple[str, list[int]]:
    """A prefix of samples/long.txt that the file's own tokenizer cuts into `count` ids."""
    from attn_cli.gguf import open_gguf

    tok = open_gguf(path).tokenizer
    words = (ROOT / "samples" / "long.txt").read_text().split()
    for n in range(1, len(words)):
        ids = tok.encode(" ".join(words[:n])).ids
        if len(ids) == count:
            return " ".join(words[:n]), list(ids)
        if len(ids) > count:
            break
    raise SystemExit(f"could not make a {count}-token text")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    ap.add_argument("--text-of", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.text_of is not None:
        print(json.dumps(text_of(args.text_of, N_TOKENS)))
        return 0
    path = gemma3_270m()
    with tempfile.TemporaryDirectory() as tmp:
        # The first run on this file, with an empty cache directory: derives the merges.
        cold_env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        # In a child: a child's ru_maxrss starts from its parent's size at the fork, and the
        # 262,144-piece tokenizer would make that size larger than either side's own peak.
        found = subprocess.run(
            [PY, __file__, "--text-of", str(path)], capture_output=True, text=True, check=True
        )
        text, ids = json.loads(found.stdout)
        cpp_script = Path(tmp) / "cpp.py"
        cpp_script.write_text(LLAMA_CPP)
        ours = attn_cli_command() + [
            "explain",
            text,
            "--model",
            str(path),
            "--layer",
            "all",
            "--head",
            "all",
            "--steps",
            "W",
            "--npz",
            "/dev/null",
        ]
        cold = run_child(ours, env=cold_env).seconds
        sides = {"attn-cli": ours, "llama.cpp": [PY, str(cpp_script), str(path), json.dumps(ids)]}
        # the warm-up round: file cache, imports, the user's merges cache
        runs = alternate_children(sides, args.runs)
    med = {k: median_seconds(v) for k, v in runs.items()}
    rss = {k: median_peak_bytes(v) / 2**20 for k, v in runs.items()}
    ratio = med["attn-cli"] / med["llama.cpp"]
    figures = {
        "tokens": N_TOKENS,
        "runs": args.runs,
        "seconds": med,
        "peak_rss_mib": rss,
        "time_vs_llama_cpp": ratio,
        "first_run_seconds": cold,
    }
    for side in sides:
        print(f"{side:10} {med[side]:7.2f} s   peak {rss[side]:7.0f} MiB")
    print(f"attn-cli, first run on this file (no cached merges): {cold:.2f} s")
    print(f"attn-cli vs llama.cpp: {ratio:.2f}× its time (target ≤ 2×)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
