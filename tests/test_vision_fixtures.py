"""The vision families against transformers, without torch: tests/fixtures/tiny_vision holds four
tiny random checkpoints (DINOv2 with registers, ViT, CLIP's and SigLIP's vision towers) and what
transformers computed for the committed test picture (scripts/make_vision_fixtures.py).

Tolerances: pixel values within 1e-5 of transformers' image processor, every attention map
within 1e-5, the pooled output within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tiny_vision"
PICTURE = FIXTURES / "picture.ppm"
MODELS = ["dinov2_registers", "vit", "clip", "siglip"]


@pytest.mark.parametrize("name", MODELS)
def test_pixels_maps_and_pooled_output_match_the_fixture(name):
    import attn_cli
    from attn_cli.images import open_image, prepare

    expected = np.load(FIXTURES / name / "expected.npz")
    m = attn_cli.load_model(FIXTURES / name)
    pixels = prepare(open_image(PICTURE), m.preprocessor).pixels
    assert pixels.shape == expected["pixel_values"].shape
    assert np.abs(pixels - expected["pixel_values"]).max() < 1e-5
    t = m.trace(str(PICTURE))
    maps = t.attention()
    assert maps.shape == expected["attentions"].shape
    assert np.abs(maps - expected["attentions"]).max() < 1e-5
    assert np.abs(t.find("pooled").data[0] - expected["pooled"]).max() < 1e-4


def test_the_token_axis_of_each_fixture():
    import attn_cli

    tokens = {
        name: attn_cli.load_model(FIXTURES / name).trace(str(PICTURE), layers=0).tokens
        for name in MODELS
    }
    assert tokens["dinov2_registers"][:4] == ["[CLS]", "reg0", "reg1", "p(0,0)"]
    assert tokens["vit"][:2] == ["[CLS]", "p(0,0)"] and len(tokens["vit"]) == 1 + 16
    assert tokens["clip"][-1] == "p(4,4)"  # 40 pixels: a 5 × 5 grid
    assert tokens["siglip"][0] == "p(0,0)" and len(tokens["siglip"]) == 16  # no class token


def test_siglip_draws_its_pooling_heads_attention():
    from tests.conftest import invoke

    r = invoke(["explain", str(PICTURE), "--model", str(FIXTURES / "siglip"), "--view", "overlay"])
    assert r.exit_code == 0, r.output
    assert "attention from the pooling head's probe over the 4 × 4 patches" in r.output
    assert "pool H0" in r.output and "pool H1" in r.output
