"""Benchmark rows: one head's attention over a long document, computed blockwise, against
llama.cpp evaluating the same tokens, same run.

    python benchmarks/long_document.py                 # Gemma 3 270M-shaped, 32,768 tokens
    python benchmarks/long_document.py --smollm2       # the real SmolLM2 GGUF, 8,192 tokens
    python benchmarks/long_document.py --tokens 2048   # a shorter run

Sides, each a fresh process on the same token ids (load included), one run each after a
warm-up on 256 tokens (file cache, imports, the tokenizer's merges cache):

  attn-cli   `attn-cli explain --file DOC --model FILE --layer L --head 2 --view heatmap`: every
             layer up to L computed blockwise (online softmax over key blocks; sliding layers
             read only their window), the shown head's pooled map (256 × 256) drawn; L is the
             last global layer (Gemma 3: 17, so every layer runs; SmolLM2: its last, 29)
  llama.cpp  llama_cpp.Llama(FILE, n_ctx=N, flash_attn=True).eval(ids) — prompt evaluation
             as users run it, loaded with use_extra_bufts off (tests/llama_cpp_safe.py)

Gemma 3 270M's geometry (18 layers, hidden 640, 4 query heads and 1 key/value head of 256,
window 512, every 6th layer global, 262,144-piece vocabulary) comes as a random-weights Q8_0
GGUF from benchmarks/make_gemma3_270m.py. Reported: wall time and peak RSS of each side and
the ratio. Targets: peak ≤ 4 GB; time ≤ 3× llama.cpp's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from gguf_smollm2 import PY, attn_cli_command, gguf_file, run_child  # noqa: E402
from make_gemma3_270m import gemma3_270m  # noqa: E402

LLAMA_CPP = f"""
import sys, json
sys.path.insert(0, {str(ROOT)!r})
from tests.llama_cpp_safe import load_llama
path, ids_file = sys.argv[1], sys.argv[2]
ids = json.loads(open(ids_file).read())
llm = load_llama(model_path=path, n_ctx=len(ids), n_batch=2048, flash_attn=True, verbose=False)
llm.eval(ids)
"""


def document(path: Path, count: int, out: Path) -> list[int]:
    """Write a text that the file's own tokenizer cuts into exactly `count` ids (BOS
    included) to `out`: samples/long.txt repeated and cut at a word; returns the ids."""
    from attn_cli.gguf import open_gguf

    tok = open_gguf(path).tokenizer
    words = (ROOT / "samples" / "long.txt").read_text().split()
    words = words * (count // len(words) * 2 + 2)  # long enough whatever the tokenizer
    lo, hi = 1, len(words)
    while lo < hi:  # the fewest words giving at least `count` ids
        mid = (lo + hi) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) >= count:
            hi = mid
        else:
            lo = mid + 1
    text = " ".join(words[:lo])
    ids = list(tok.encode(text).ids)
    while len(ids) > count:  # the last word split into several pieces: drop characters
        text = text[:-1].rstrip()
        ids = list(tok.encode(text).ids)
    if len(ids) != count:
        raise SystemExit(f"could not make a {count}-token text (got {len(ids)})")
    out.write_text(text)
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2", action="store_true", help="the real SmolLM2 GGUF, 8,192 tokens")
    ap.add_argument("--tokens", type=int, help="default 32,768 (Gemma 3) or 8,192 (SmolLM2)")
    ap.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    ap.add_argument("--doc-of", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.doc_of is not None:  # in a child, so the tokenizer's size counts in no side's peak
        path, count, out = args.doc_of
        ids = document(Path(path), int(count), Path(out))
        Path(out + ".ids").write_text(json.dumps(ids))
        return 0
    if args.smollm2:
        path, tokens, layer, model = gguf_file(), args.tokens or 8192, 29, "smollm2"
    else:
        path, tokens, layer = gemma3_270m(), args.tokens or 32_768, 17
        model = str(path)
    with tempfile.TemporaryDirectory() as tmp:
        cpp_script = Path(tmp) / "cpp.py"
        cpp_script.write_text(LLAMA_CPP)

        def sides(count: int) -> dict[str, list[str]]:
            doc = Path(tmp) / f"doc{count}.txt"
            subprocess.run([PY, __file__, "--doc-of", str(path), str(count), str(doc)], check=True)
            return {
                "attn-cli": attn_cli_command()
                + ["explain", "--file", str(doc), "--model", model, "--layer", str(layer)]
                + ["--head", "2", "--view", "heatmap"],
                "llama.cpp": [PY, str(cpp_script), str(path), str(doc) + ".ids"],
            }

        for cmd in sides(256).values():  # warm-up: file cache, imports, the merges cache
            run_child(cmd)
        seconds, peaks = {}, {}
        for side, cmd in sides(tokens).items():
            seconds[side], peaks[side] = run_child(cmd)
            print(f"{side}: {seconds[side]:.1f} s, peak {peaks[side] / 2**20:.0f} MiB", flush=True)
    ratio = seconds["attn-cli"] / seconds["llama.cpp"]
    figures = {
        "model": "SmolLM2-135M (real)" if args.smollm2 else "Gemma 3 270M geometry (random)",
        "tokens": tokens,
        "layer": layer,
        "seconds": seconds,
        "peak_rss_mib": {k: v / 2**20 for k, v in peaks.items()},
        "time_vs_llama_cpp": ratio,
    }
    for side in seconds:
        print(f"{side:10} {seconds[side]:7.1f} s   peak {peaks[side] / 2**20:7.0f} MiB")
    print(f"attn-cli peak {peaks['attn-cli'] / 2**30:.2f} GiB (target ≤ 4 GB)")
    print(f"attn-cli vs llama.cpp: {ratio:.2f}× its time (target ≤ 3×)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
