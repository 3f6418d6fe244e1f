"""Tiny vision checkpoints for the tests that need no reference: random numpy weights in a
DINOv2-with-registers layout (what the CLI/API wiring, the untrusted-input and the view tests
run), and a deterministic test picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

D, LAYERS, HEADS, PATCH = 16, 2, 2, 8
REGISTERS = 2
# Trained at 48 pixels (a 6 × 6 position grid), run at 32 (4 × 4): positions are resized.
IMAGE_SIZE, INPUT = 48, 32


def picture(width: int = 50, height: int = 40, seed: int = 1) -> np.ndarray:
    """A smooth colour gradient with noise: (height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def build_dinov2(directory: Path, seed: int = 0) -> Path:
    """A random DINOv2-with-registers checkpoint (float32) with a BitImageProcessor config."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    grid = IMAGE_SIZE // PATCH
    t = {
        "embeddings.cls_token": r(1, 1, D),
        "embeddings.mask_token": r(1, D),
        "embeddings.register_tokens": r(1, REGISTERS, D),
        "embeddings.patch_embeddings.projection.weight": r(D, 3, PATCH, PATCH, scale=0.1),
        "embeddings.patch_embeddings.projection.bias": r(D),
        "embeddings.position_embeddings": r(1, 1 + grid * grid, D),
        "layernorm.weight": 1 + r(D, scale=0.1),
        "layernorm.bias": r(D, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[p + f"attention.attention.{n}.weight"] = r(D, D)
            t[p + f"attention.attention.{n}.bias"] = r(D)
        t[p + "attention.output.dense.weight"] = r(D, D)
        t[p + "attention.output.dense.bias"] = r(D)
        for n in ("norm1", "norm2"):
            t[p + n + ".weight"] = 1 + r(D, scale=0.1)
            t[p + n + ".bias"] = r(D, scale=0.1)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = r(2 * D, D), r(2 * D)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = r(D, 2 * D), r(D)
        t[p + "layer_scale1.lambda1"], t[p + "layer_scale2.lambda1"] = r(D), r(D)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(t, str(directory / "model.safetensors"))
    config = {
        "model_type": "dinov2_with_registers",
        "hidden_size": D,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "mlp_ratio": 2,
        "patch_size": PATCH,
        "image_size": IMAGE_SIZE,
        "num_register_tokens": REGISTERS,
    }
    (directory / "config.json").write_text(json.dumps(config))
    processor = {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 36},
        "crop_size": {"height": INPUT, "width": INPUT},
        "do_center_crop": True,
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory
