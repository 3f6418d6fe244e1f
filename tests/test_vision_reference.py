"""Vision transformers in numpy against transformers (eager attention, float32): tiny random
ViT, DeiT, DINOv2 (with and without registers), CLIP-vision (and a full CLIP) and SigLIP-vision
(and a full SigLIP) models built here, saved with their image processors' configs, run on the
same picture through attn-cli's own preprocessing. Pixel values within 1e-5 of transformers'
(PIL) image processor, every attention map within 1e-5, the pooled output within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require
from tests.vision_utils import picture

D, LAYERS, HEADS, INTER, PATCH = 32, 2, 4, 64, 8


def _processor(name: str, **kwargs):
    """transformers' PIL-backend image processor (the slow one, in 4.x the only one)."""
    import transformers

    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls(**kwargs)


def _models():
    """name -> (config, model class, processor, forward keywords)."""
    import transformers as tf

    common = dict(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        patch_size=PATCH,
    )
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    dino = dict(
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        mlp_ratio=2,
        patch_size=PATCH,
        image_size=48,
    )
    bit = _processor(
        "BitImageProcessor",
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        **imagenet,
    )
    clip_vision = dict(common, image_size=32)
    return {
        "vit": (
            tf.ViTConfig(**common, image_size=32),
            tf.ViTModel,
            _processor("ViTImageProcessor", size={"height": 32, "width": 32}),
            {},
        ),
        "deit": (
            tf.DeiTConfig(**common, image_size=32),
            tf.DeiTModel,
            _processor(
                "DeiTImageProcessor",
                size={"height": 40, "width": 40},
                crop_size={"height": 32, "width": 32},
            ),
            {},
        ),
        # trained at 48 pixels (6 × 6 positions), run at 32 (4 × 4): antialiased resizing
        "dinov2": (tf.Dinov2Config(**dino), tf.Dinov2Model, bit, {}),
        "dinov2_with_registers": (
            tf.Dinov2WithRegistersConfig(**dino, num_register_tokens=3),
            tf.Dinov2WithRegistersModel,
            bit,
            {},
        ),
        # run at 40 pixels (5 × 5 patches) with 4 × 4 trained positions: bicubic resizing
        "clip_vision": (
            tf.CLIPVisionConfig(**clip_vision),
            tf.CLIPVisionModel,
            _processor(
                "CLIPImageProcessor",
                size={"shortest_edge": 40},
                crop_size={"height": 40, "width": 40},
            ),
            {"interpolate_pos_encoding": True},
        ),
        "clip": (
            tf.CLIPConfig(
                text_config=dict(
                    hidden_size=D,
                    intermediate_size=INTER,
                    num_hidden_layers=1,
                    num_attention_heads=HEADS,
                    vocab_size=99,
                ),
                vision_config=clip_vision,
                projection_dim=16,
            ),
            tf.CLIPModel,
            _processor(
                "CLIPImageProcessor",
                size={"shortest_edge": 32},
                crop_size={"height": 32, "width": 32},
            ),
            {},
        ),
        "siglip_vision": (
            tf.SiglipVisionConfig(**clip_vision),
            tf.SiglipVisionModel,
            _processor("SiglipImageProcessor", size={"height": 32, "width": 32}),
            {},
        ),
        "siglip": (
            tf.SiglipConfig(
                text_config=dict(
                    hidden_size=D,
                    intermediate_size=INTER,
                    num_hidden_layers=1,
                    num_attention_heads=HEADS,
                    vocab_size=99,
                ),
                vision_config=clip_vision,
            ),
            tf.SiglipModel,
            _processor("SiglipImageProcessor", size={"height": 32, "width": 32}),
            {},
        ),
    }


def _randomise(model, seed: int) -> None:
    """Weights large enough that attention is far from uniform; norms' gains near 1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require("torch")
    require("transformers")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            config, cls, processor, forward = _models()[name]
            model = cls(config)
            _randomise(model, seed=len(name))
            d = tmp_path_factory.mktemp(name)
            model.save_pretrained(d)
            processor.save_pretrained(d)
            cache[name] = (d, forward)
        return cache[name]

    return get


def _reference(d: Path, forward: dict, img):
    """transformers on the same files: pixel values, attentions (layers, heads, n, n), pooled."""
    import torch
    import transformers as tf

    cfg = tf.AutoConfig.from_pretrained(d)
    model = tf.AutoModel.from_pretrained(d, attn_implementation="eager").eval()
    tower = model.vision_model if cfg.model_type in ("clip", "siglip") else model
    processor = tf.AutoImageProcessor.from_pretrained(d, backend="pil")
    pixels = processor(images=img, return_tensors="np")["pixel_values"]
    with torch.no_grad():
        out = tower(pixel_values=torch.from_numpy(pixels), output_attentions=True, **forward)
    maps = np.stack([a[0].numpy() for a in out.attentions])
    # SigLIP's attention-pooling head: its probe's weights over the last hidden state
    head = getattr(getattr(tower, "vision_model", tower), "head", None)
    pool = None
    if head is not None:
        with torch.no_grad():
            h = out.last_hidden_state
            _, weights = head.attention(
                head.probe, h, h, need_weights=True, average_attn_weights=False
            )
        pool = weights[0].numpy()  # (heads, 1, n)
    return pixels[0], maps, out.pooler_output[0].numpy(), pool


NAMES = [
    "vit",
    "deit",
    "dinov2",
    "dinov2_with_registers",
    "clip_vision",
    "clip",
    "siglip_vision",
    "siglip",
]


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_pixels_maps_and_pooled_output_match_transformers(built, name):
    from PIL import Image

    import attn_cli
    from attn_cli.images import open_image, prepare

    d, forward = built(name)
    img = Image.fromarray(picture(50, 40))
    ref_pixels, ref_maps, ref_pooled, ref_pool = _reference(d, forward, img)
    m = attn_cli.load_model(d)
    ours = prepare(open_image(img), m.preprocessor).pixels
    assert ours.shape == ref_pixels.shape
    assert np.abs(ours - ref_pixels).max() < 1e-5
    t = m.trace(image=img)
    maps = t.attention()
    assert maps.shape == ref_maps.shape
    # far from uniform, so a wrong scale or softmax shows
    assert ref_maps.max(-1).mean() > 2.0 / ref_maps.shape[-1]
    assert np.abs(maps - ref_maps).max() < 1e-5
    assert (ref_pool is None) == (name not in ("siglip_vision", "siglip"))
    if ref_pool is not None:
        pool = np.stack([s.data for s in t.steps_named("W_pool")])
        assert pool.shape == ref_pool.shape
        assert np.abs(pool - ref_pool).max() < 1e-5
    pooled = t.find("pooled").data[0]
    assert np.abs(pooled - ref_pooled).max() < 1e-4 * max(1.0, np.abs(ref_pooled).max())
