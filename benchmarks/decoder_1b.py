"""Benchmark row: a 1B-class random Llama, attn-cli's numpy forward pass vs transformers.

    python benchmarks/decoder_1b.py                 # write the checkpoint once, then time both
    python benchmarks/decoder_1b.py --runs 3        # alternate the two sides 3 times
    python benchmarks/decoder_1b.py --cli           # time `attn-cli explain … --model DIR`

The checkpoint (hidden 2048, 16 layers, 32 heads, 8 key/value heads, intermediate 8192,
vocabulary 32000, tied embeddings: 1.1B parameters, 2.2 GB of bfloat16 safetensors) is written
with numpy alone, no torch, into a cache directory (ATTN_CLI_BENCH_DIR, default
/tmp/attn-cli-bench/llama-1b). Both sides run in fresh processes on the same 128 token ids,
same run, alternating:

  attn-cli      every layer through the llama family (all attention steps computed), layer 8
                head 3 kept, the next-token prediction of the last position (the work of
                `attn-cli explain TEXT --model DIR --layer 8 --head 3`; --cli runs that command,
                rendering included)
  transformers  AutoModelForCausalLM.from_pretrained(DIR, dtype=float32,
                attn_implementation="eager"), one forward pass with output_attentions=True

Reported: whole-process wall time, CPU time (user + system) and peak RSS (ru_maxrss of each
child, from os.wait4), and the ratios (targets: ≥ 3× faster, ≤ 0.3× peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from harness import (
    PY,
    ChildRun,
    alternate_children,
    next_token_top5,
    open_decoder,
    transformers_top5,
    versus_transformers,
    write_random_bf16_safetensors,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "rope_theta": 500000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
N_TOKENS = 128
LAYER, HEAD = 8, 3
TEXT_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "the",
    "cat",
    "sleeps",
    "on",
    "a",
    "warm",
    "mat",
]


def default_dir() -> Path:
    return Path(os.environ.get("ATTN_CLI_BENCH_DIR", "/tmp/attn-cli-bench/llama-1b"))


def tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, inter, heads, kv, hd = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
    )
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (cfg["vocab_size"], d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (heads * hd, d)),
            (p + "self_attn.k_proj.weight", (kv * hd, d)),
            (p + "self_attn.v_proj.weight", (kv * hd, d)),
            (p + "self_attn.o_proj.weight", (d, heads * hd)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (inter, d)),
            (p + "mlp.up_proj.weight", (inter, d)),
            (p + "mlp.down_proj.weight", (d, inter)),
        ]
    out.append(("model.norm.weight", (d,)))
    return out


def write_checkpoint(d: Path) -> None:
    """Random bf16 weights (normal, std 0.02 like an initialised model; norms 1)."""
    d.mkdir(parents=True, exist_ok=True)
    write_random_bf16_safetensors(d / "model.safetensors", tensors(CONFIG), lambda name: 0.02)
    (d / "config.json").write_text(json.dumps(CONFIG, indent=2))
    from attn_cli.tokenizer import BUNDLED_TOKENIZER  # 30522 WordPiece tokens < 32000

    shutil.copy(BUNDLED_TOKENIZER, d / "tokenizer.json")


def token_ids(d: Path) -> tuple[str, list[int]]:
    """A text of exactly N_TOKENS tokens (special tokens included) and its ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    words: list[str] = []
    i = 0
    while True:
        candidate = " ".join([*words, TEXT_WORDS[i % len(TEXT_WORDS)]])
        if len(tok.encode(candidate).ids) > N_TOKENS:
            break
        words.append(TEXT_WORDS[i % len(TEXT_WORDS)])
        i += 1
    text = " ".join(words)
    ids = tok.encode(text).ids
    while len(ids) < N_TOKENS:  # pad with one more short word if the last one was long
        text += " a"
        ids = tok.encode(text).ids
    return text, ids[:N_TOKENS]


def child_ours(d: Path, ids: list[int]) -> None:
    fam, w, cfg = open_decoder(d)
    x = fam.embed(w, ids, cfg)
    kept = None
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        if i == LAYER:
            kept = layer.attention.weights[HEAD].copy()
        x = layer.out
    h = fam.final(w, x, cfg)
    top5 = next_token_top5(fam.logits(w, h[-1:], cfg)[0])
    assert kept is not None and kept.shape == (len(ids), len(ids))
    print(json.dumps(top5))


def child_transformers(d: Path, ids: list[int]) -> None:
    transformers_top5(d, ids)


def log_run(side: str, run: ChildRun) -> None:
    print(
        f"{side:13s} {run.seconds:7.2f} s  {run.cpu_seconds:7.2f} s CPU  "
        f"{run.peak_bytes / 2**20:8.0f} MiB",
        file=sys.stderr,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=default_dir())
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cli", action="store_true", help="time the attn-cli command itself")
    ap.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = args.dir
    if args.child:
        ids = json.loads((d / "ids.json").read_text())
        (child_ours if args.child == "ours" else child_transformers)(d, ids)
        return
    if not (d / "model.safetensors").is_file():
        t0 = time.perf_counter()
        write_checkpoint(d)
        print(f"wrote {d} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    text, ids = token_ids(d)
    (d / "ids.json").write_text(json.dumps(ids))
    script = str(Path(__file__).resolve())
    if args.cli:
        attn = shutil.which("attn-cli", path=str(Path(PY).parent)) or "attn-cli"
        ours_cmd = [
            attn,
            "explain",
            text,
            "--model",
            str(d),
            "--layer",
            str(LAYER),
            "--head",
            str(HEAD),
        ]
    else:
        ours_cmd = [PY, script, "--dir", str(d), "--child", "ours"]
    ref_cmd = [PY, script, "--dir", str(d), "--child", "transformers"]
    results = alternate_children(
        {"attn-cli": ours_cmd, "transformers": ref_cmd}, args.runs, warmup=0, each=log_run
    )
    row = {
        "row": (
            "attn-cli explain … --layer 8 --head 3 (the command itself)"
            if args.cli
            else "every layer, layer 8 head 3 kept, next-token prediction"
        )
        + " · 1B-class random Llama (bf16), 128 tokens",
        **versus_transformers(results["attn-cli"], results["transformers"]),
        "targets": "speedup >= 3, memory_ratio <= 0.3",
        "same_top5": None
        if args.cli
        else results["attn-cli"][-1].last_json()["top"]
        == results["transformers"][-1].last_json()["top"],
        "runs": args.runs,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
