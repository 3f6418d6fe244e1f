"""Benchmark row: a ViT-B/16-geometry model (random weights), every attention map of one picture,
attn-cli's numpy forward pass vs transformers.

    python benchmarks/vit_b16.py               # write the checkpoint once, then time both
    python benchmarks/vit_b16.py --runs 3      # alternate the two sides 3 times

The checkpoint (hidden 768, 12 layers × 12 heads, intermediate 3072, 16-pixel patches at 224
pixels: 197 tokens, 86M parameters, float32 safetensors with a ViTImageProcessor config) is
written with numpy alone into a cache directory (ATTN_CLI_BENCH_DIR, default
/tmp/attn-cli-bench/vit-b16). Both sides run in fresh processes on the same 320 × 240 picture:

  attn-cli      load_model(DIR).trace(picture, steps="W"): its preprocessing, every layer, every
                head's attention map kept
  transformers  ViTImageProcessor (PIL) + ViTModel.from_pretrained(DIR, attn_implementation=
                "eager"), one forward pass with output_attentions=True

`--threads N` sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS for both children
(on a shared 2-core machine, two BLAS threads each fighting other jobs ran 2.5× slower than one).

Reported: whole-process wall time, CPU time (user + system) and peak RSS (ru_maxrss of each
child, from os.wait4), and the ratios (targets: ≥ 3× faster, ≤ 0.3× peak memory).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import code_versus_transformers

CONFIG = {
    "model_type": "vit",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
}
PROCESSOR = {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}}

OURS = """
import sys, numpy as np, attn_cli
img = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
t = attn_cli.load_model(sys.argv[1]).trace(image=img, steps="W")
assert t.attention().shape == (12, 12, 197, 197)
"""
THEIRS = """
import sys, numpy as np, torch, transformers as tf
img = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
cls = getattr(tf, "ViTImageProcessorPil", None) or tf.ViTImageProcessor
pixels = cls(size={"height": 224, "width": 224})(images=img, return_tensors="pt")["pixel_values"]
model = tf.ViTModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
with torch.no_grad():
    out = model(pixel_values=pixels, output_attentions=True)
assert torch.stack(out.attentions).shape == (12, 1, 12, 197, 197)
"""


def write_checkpoint(d: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    if (d / "model.safetensors").is_file():
        return
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, inter, p = 768, 3072, 16

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    t = {
        "embeddings.cls_token": r(1, 1, h),
        "embeddings.position_embeddings": r(1, 197, h),
        "embeddings.patch_embeddings.projection.weight": r(h, 3, p, p),
        "embeddings.patch_embeddings.projection.bias": r(h),
        "layernorm.weight": np.ones(h, np.float32),
        "layernorm.bias": r(h),
        "pooler.dense.weight": r(h, h),
        "pooler.dense.bias": r(h),
    }
    for i in range(12):
        pre = f"encoder.layer.{i}."
        for n in ("attention.attention.query", "attention.attention.key"):
            t[pre + n + ".weight"], t[pre + n + ".bias"] = r(h, h) * 20, r(h)
        for n in ("attention.attention.value", "attention.output.dense"):
            t[pre + n + ".weight"], t[pre + n + ".bias"] = r(h, h), r(h)
        t[pre + "intermediate.dense.weight"], t[pre + "intermediate.dense.bias"] = (
            r(inter, h),
            r(inter),
        )
        t[pre + "output.dense.weight"], t[pre + "output.dense.bias"] = r(h, inter), r(h)
        for n in ("layernorm_before", "layernorm_after"):
            t[pre + n + ".weight"], t[pre + n + ".bias"] = np.ones(h, np.float32), r(h)
    save_file(t, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))


if __name__ == "__main__":
    code_versus_transformers("vit-b16", write_checkpoint, OURS, THEIRS)
