"""Benchmark row: gpt-oss-20b's layer geometry truncated to 2 layers, attn-cli vs transformers.

    python benchmarks/gpt_oss_20b.py                # write the checkpoint once, then time both
    python benchmarks/gpt_oss_20b.py --runs 3       # alternate the two sides 3 times
    python benchmarks/gpt_oss_20b.py --layers 1     # a smaller checkpoint (3.2 GB)

The checkpoint is gpt-oss-20b's geometry (hidden 2880, 64 query / 8 key-value heads of 64, 32
experts, top 4, intermediate 2880, vocabulary 201,088, untied LM head, sliding window 128 on
the even layers, YaRN) with 2 of its 24 layers: 2.8B parameters, 5.6 GB of random bfloat16
safetensors, written with numpy alone (no torch) into a cache directory (ATTN_CLI_BENCH_DIR,
default /tmp/attn-cli-bench/gpt-oss-20b-2l). Experts are stored as transformers saves
GptOssForCausalLM (bf16 [E, d, 2·inter] and [E, inter, d]), not as the hub's MXFP4. Both sides
run in fresh processes on the same 128 token ids, same run, alternating:

  attn-cli      every layer through the gpt_oss family, every attention map of every layer and
                head kept (64 heads × 128 × 128, plus each row's sink mass and the router), the
                next-token prediction of the last position
  transformers  AutoModelForCausalLM.from_pretrained(DIR, dtype=float32,
                attn_implementation="eager"), one forward pass with output_attentions=True

Reported: whole-process wall time, CPU time (user + system) and peak RSS (ru_maxrss of each
child, from os.wait4), the ratios (targets: ≥ 3× faster, ≤ 0.3× peak memory), whether both
sides predict the same top 5 tokens, and what a full 24-layer model would need, extrapolated
from attn-cli's measured time per layer and the maps it keeps per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (
    PY,
    ChildRun,
    alternate_children,
    bench_dir,
    max_peak_bytes,
    median_seconds,
    next_token_top5,
    open_decoder,
    transformers_top5,
    versus_transformers,
    write_random_bf16_safetensors,
)

ROOT = Path(__file__).resolve().parent.parent
FULL_LAYERS = 24  # gpt-oss-20b
CONFIG = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_hidden_layers": 2,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 32,
    "num_experts_per_tok": 4,
    "vocab_size": 201088,
    "sliding_window": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": True,
    "tie_word_embeddings": False,
    "swiglu_limit": 7.0,
    "rope_theta": 150000.0,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
    "torch_dtype": "bfloat16",
}
N_TOKENS = 128


def default_dir(layers: int) -> Path:
    return bench_dir(f"gpt-oss-20b-{layers}l")


def config(layers: int) -> dict:
    kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return {**CONFIG, "num_hidden_layers": layers, "layer_types": kinds}


def tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, inter, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (cfg["vocab_size"], d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (q, d)),
            (p + "self_attn.q_proj.bias", (q,)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (d, q)),
            (p + "self_attn.o_proj.bias", (d,)),
            (p + "self_attn.sinks", (cfg["num_attention_heads"],)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.router.weight", (e, d)),
            (p + "mlp.router.bias", (e,)),
            (p + "mlp.experts.gate_up_proj", (e, d, 2 * inter)),
            (p + "mlp.experts.gate_up_proj_bias", (e, 2 * inter)),
            (p + "mlp.experts.down_proj", (e, inter, d)),
            (p + "mlp.experts.down_proj_bias", (e, d)),
        ]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (cfg["vocab_size"], d))]
    return out


def write_checkpoint(d: Path, layers: int) -> None:
    """Random bf16 weights (normal, std 0.02; norms 1; router std 0.2 so tokens pick different
    experts)."""
    cfg = config(layers)
    d.mkdir(parents=True, exist_ok=True)
    write_random_bf16_safetensors(
        d / "model.safetensors", tensors(cfg), lambda name: 0.2 if "router" in name else 0.02
    )
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


def token_ids(cfg: dict) -> list[int]:
    """128 fixed pseudo-random token ids (the model is random: any ids do)."""
    import numpy as np

    return np.random.default_rng(1).integers(0, cfg["vocab_size"], N_TOKENS).tolist()


def child_ours(d: Path, ids: list[int]) -> None:
    """As `attn-cli explain` runs a model: its malloc setting, BLAS threads for the free cores."""
    from attn_cli.blas import threads_for_free_cores
    from attn_cli.memory import reuse_freed_memory

    reuse_freed_memory()
    with threads_for_free_cores():
        forward(d, ids)


def forward(d: Path, ids: list[int]) -> None:
    fam, w, cfg = open_decoder(d)
    x = fam.embed(w, ids, cfg)
    kept, seconds = [], []
    t0 = time.perf_counter()
    for layer in fam.layers(w, x, cfg):
        kept.append(layer.attention.weights)  # every head's map
        x = layer.out
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    h = fam.final(w, x, cfg)
    top5 = next_token_top5(fam.logits(w, h[-1:], cfg)[0])
    assert all(m.shape == (cfg["num_attention_heads"], len(ids), len(ids)) for m in kept)
    print(
        json.dumps(
            {
                **top5,
                "layer_seconds": seconds,
                "kept_bytes_per_layer": kept[0].nbytes,
            }
        )
    )


def child_transformers(d: Path, ids: list[int]) -> None:
    model, out = transformers_top5(d, ids)
    assert len(out.attentions) == model.config.num_hidden_layers


def measure(d: Path, layers: int, runs: int, sides: tuple[str, ...]) -> dict[str, list[ChildRun]]:
    if not (d / "model.safetensors").is_file():
        t0 = time.perf_counter()
        write_checkpoint(d, layers)
        print(f"wrote {d} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    (d / "ids.json").write_text(json.dumps(token_ids(config(layers))))
    script = str(Path(__file__).resolve())
    cmds = {side: [PY, script, "--dir", str(d), "--child", side] for side in sides}

    def log_run(side: str, run: ChildRun) -> None:
        print(
            f"{layers} layers  {side:13s} {run.seconds:7.2f} s  {run.cpu_seconds:7.2f} s CPU  "
            f"{run.peak_bytes / 2**20:8.0f} MiB  load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )

    return alternate_children(cmds, runs, warmup=0, each=log_run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = args.dir or default_dir(args.layers)
    if args.child:
        ids = json.loads((d / "ids.json").read_text())
        {"ours": child_ours, "transformers": child_transformers}[args.child](d, ids)
        return
    m = measure(d, args.layers, args.runs, ("ours", "transformers"))
    ours, ref = m["ours"][-1].last_json(), m["transformers"][-1].last_json()
    seconds, peak = median_seconds(m["ours"]), max_peak_bytes(m["ours"])
    row = {
        "row": f"gpt-oss-20b geometry, {args.layers} layers (random bf16), 128 tokens, every map",
        **versus_transformers(m["ours"], m["transformers"]),
        "targets": "speedup >= 3, memory_ratio <= 0.3",
        "same_top5": ours["top"] == ref["top"],
        "runs": args.runs,
        "cpus": os.cpu_count(),
    }
    # A full model: the same fixed costs (imports, embeddings, the LM head), every further
    # layer as long as a measured one, and its kept maps on top of the peak (weights are read
    # and released a layer at a time, so nothing else grows with the layer count).
    per_layer = statistics.median(ours["layer_seconds"])
    extra = FULL_LAYERS - args.layers
    row["per_layer_s"] = round(per_layer, 2)
    row["full_24_layers_s_estimate"] = round(seconds + extra * per_layer, 1)
    row["full_24_layers_peak_mib_estimate"] = round(
        (peak + extra * ours["kept_bytes_per_layer"]) / 2**20
    )
    row["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
