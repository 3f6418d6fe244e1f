"""Build the tiny vision checkpoints in tests/fixtures/tiny_vision/ and their expected outputs.

    pip install ".[reference]"      # torch + transformers: this script only, never at run time
    python scripts/make_vision_fixtures.py
    python scripts/make_vision_fixtures.py --check   # rebuild in a temporary directory, compare

Writes tests/fixtures/tiny_vision/:
  picture.ppm          the test picture, 64 × 48: a small drawn scene (sky, sun, house, grass),
                       binary PPM so its bytes never depend on a compressor's version
  <model>/config.json, preprocessor_config.json, model.safetensors (float32, torch layout), and
  <model>/expected.npz from transformers (eager attention, float32; its PIL image processor):
      pixel_values   (3, H, W) what the processor made of picture.ppm
      attentions     output_attentions stacked: (layers, heads, n, n)
      pooled         pooler_output (d,)
for four models (hidden 16, 2 layers, 2 heads, 8-pixel patches):
  dinov2_registers  DINOv2 with 2 registers, trained at 48 pixels, run at 32 (resized positions)
  vit               ViT with its pooler, at 32 pixels (bilinear resize, no crop)
  clip              CLIP's vision tower trained at 32 pixels, run at 40 (interpolate_pos_encoding)
  siglip            SigLIP's vision tower with its attention-pooling head, at 32 pixels

Weights are drawn with a fixed torch seed, large enough that attention is far from uniform (the
script prints the mean largest weight per row).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tiny_vision"
SEED = 27
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
LAYERS = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}

# name -> (config.json, preprocessor_config.json, forward keywords)
MODELS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "dinov2_registers": (
        {
            "model_type": "dinov2_with_registers",
            **LAYERS,
            "mlp_ratio": 2,
            "image_size": 48,
            "num_register_tokens": 2,
        },
        {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": 36},
            "do_center_crop": True,
            "crop_size": {"height": 32, "width": 32},
            "resample": 3,
            **IMAGENET,
        },
        {},
    ),
    "vit": (
        {"model_type": "vit", **LAYERS, "intermediate_size": 32, "image_size": 32},
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}},
        {},
    ),
    "clip": (
        {"model_type": "clip_vision_model", **LAYERS, "intermediate_size": 32, "image_size": 32},
        {
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": 40},
            "crop_size": {"height": 40, "width": 40},
        },
        {"interpolate_pos_encoding": True},
    ),
    "siglip": (
        {"model_type": "siglip_vision_model", **LAYERS, "intermediate_size": 32, "image_size": 32},
        {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32}},
        {},
    ),
}


def picture() -> np.ndarray:
    """A 64 × 48 scene: a sky gradient, a sun, a red house with a dark door, green grass."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    img[...] = np.stack([90 + y * 2, 150 + y, np.full_like(y, 235)], -1)  # sky
    img[(x - 50) ** 2 + (y - 10) ** 2 < 36] = (250, 215, 60)  # sun
    img[y >= 34] = (70, 150, 60)  # grass
    img[(x >= 12) & (x < 32) & (y >= 20) & (y < 38)] = (190, 50, 40)  # house
    img[(y >= 12) & (y < 20) & (np.abs(x - 22) <= (y - 12) * 1.4)] = (120, 40, 30)  # roof
    img[(x >= 19) & (x < 25) & (y >= 28) & (y < 38)] = (60, 35, 25)  # door
    return img.astype(np.uint8)


def write_ppm(path: Path, img: np.ndarray) -> None:
    h, w, _ = img.shape
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + img.tobytes())


def processor(settings: dict[str, Any]):
    """transformers' PIL-backend image processor of a preprocessor_config.json."""
    import transformers

    name = settings["image_processor_type"]
    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls(**{k: v for k, v in settings.items() if k != "image_processor_type"})


def build(name: str, seed: int):
    import torch
    import transformers as tf

    config_dict, _, _ = MODELS[name]
    kind = config_dict["model_type"]
    config_cls = tf.CONFIG_MAPPING[kind]
    config = config_cls(**{k: v for k, v in config_dict.items() if k != "model_type"})
    config._attn_implementation = "eager"
    model = tf.AutoModel.from_config(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            gain = "norm" in param_name and param_name.endswith("weight")
            p.copy_(1 + 0.1 * noise if gain else 0.3 * noise)
    return model


def write(name: str, root: Path = FIXTURES) -> None:
    import torch
    from PIL import Image
    from safetensors.numpy import save_file

    config, settings, forward = MODELS[name]
    root.mkdir(parents=True, exist_ok=True)
    write_ppm(root / "picture.ppm", picture())
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = build(name, SEED + len(name))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    pixels = processor(settings)(images=Image.open(root / "picture.ppm"), return_tensors="np")[
        "pixel_values"
    ]
    with torch.no_grad():
        result = model(pixel_values=torch.from_numpy(pixels), output_attentions=True, **forward)
    attentions = torch.stack(result.attentions)[:, 0].numpy()
    expected = {
        "pixel_values": pixels[0].astype(np.float32),
        "attentions": attentions.astype(np.float32),
        "pooled": result.pooler_output[0].numpy().astype(np.float32),
    }
    arrays: dict[str, Any] = expected
    np.savez_compressed(out / "expected.npz", **arrays)
    print(
        f"tiny_vision/{name}: {attentions.shape[-1]} tokens; attention: mean largest weight per "
        f"row {attentions.max(-1).mean():.2f} (uniform would be {1 / attentions.shape[-1]:.2f})"
    )


def check() -> int:
    """Rebuild the fixtures and compare them with the committed ones (scripts/fixture_check.py)."""
    from fixture_check import check as compare

    return compare(
        lambda tmp: [write(name, tmp) for name in MODELS], FIXTURES, "make_vision_fixtures"
    )


def main() -> None:
    import sys

    if sys.argv[1:] == ["--check"]:
        raise SystemExit(check())
    if sys.argv[1:]:
        raise SystemExit("usage: python scripts/make_vision_fixtures.py [--check]")
    for name in MODELS:
        write(name)


if __name__ == "__main__":
    main()
