"""Llama 4's text model (llama4_text) against transformers' Llama4ForCausalLM (eager attention,
float32 from bf16 safetensors).

The tiny model: hidden 64, 4 layers (0-2 rotary with chunked attention over 4-token chunks,
3 NoPE with attention temperature tuning, floor_scale 2 so the factor changes within 14
tokens), 4 query heads on 2 key/value heads, head_dim 16, L2 q/k norm, 4 experts top 2 with a
shared expert on layers 1 and 3 (interleave_moe_layer_step 2), dense MLPs on 0 and 2. Each
feature switched off changes the maps, and the maps still equal transformers'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.llama4 import Llama4TextArgs, chunked_mask, layer_types, temperature
from attn_cli.models.weights import SafetensorsWeights
from tests.conftest import ROOT, require
from tests.decoder_utils import (
    RecordingWeights,
    agrees_with_transformers,
    attention_maps,
    build_random_model,
    built_once,
    family,
    run,
)

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_llama4"
TINY = dict(
    num_hidden_layers=4,
    head_dim=16,
    intermediate_size=32,
    intermediate_size_mlp=128,
    num_local_experts=4,
    num_experts_per_tok=2,
    interleave_moe_layer_step=2,
    attention_chunk_size=4,
    floor_scale=2,
    attn_scale=0.5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Llama 4 Scout's rope scaling (llama3 with equal low and high frequency factors: a hard cut
# between the frequencies kept and those divided by 16), over an 8-token original length
SCOUT_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 16.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 1.0,
    "original_max_position_embeddings": 8,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")

    def build(d: Path, name: str, **overrides: Any) -> None:
        build_random_model("llama4_text", d, overrides={**TINY, **overrides})

    return built_once(tmp_path_factory, build)


def _agrees(d: Path) -> np.ndarray:
    """Our maps for the model in `d`, checked against transformers' (and the logits)."""
    return attention_maps(agrees_with_transformers(d, IDS, 4)[0])


@pytest.mark.reference
def test_maps_and_logits_match_transformers(tiny):
    d = tiny()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["no_rope_layers"] == [1, 1, 1, 0] and cfg["moe_layers"] == [1, 3]
    assert cfg["layer_types"] == ["chunked_attention"] * 3 + ["full_attention"]
    maps = _agrees(d)
    n = len(IDS)
    i, j = np.indices((n, n))
    other_chunk = (i // 4) != (j // 4)
    assert (maps[:3][:, :, other_chunk] == 0).all()  # chunks of 4: nothing across them
    assert (maps[:3][:, :, ~other_chunk & (j <= i)] > 0).all()
    assert (maps[3][:, j <= i] > 0).all()  # the NoPE layer sees every earlier token
    ours = run(d, IDS)
    for layer, out in enumerate(ours["layers"]):
        names = [s.name for s in out.attention.stages]
        between = names[names.index("V") + 1 : names.index("W_raw")]
        if layer < 3:
            assert between == ["Q_rot", "K_rot", "Q_norm", "K_norm"]  # the L2 norm after RoPE
        else:
            assert between == ["Q_temp", "K_temp"]
            rec = out.attention
            np.testing.assert_array_equal(rec["K_temp"], rec["K"])
            factor = rec["Q_temp"][0, :, 0] / rec["Q"][0, :, 0]
            np.testing.assert_allclose(factor, temperature(n, Llama4TextArgs.parse(cfg)), rtol=1e-6)
        assert ("router" in out.attention) == (layer in (1, 3))
        assert out.attention.facts["rope"] is (layer < 3)


@pytest.mark.reference
def test_router_is_transformers_sigmoid_top_k(tiny):
    import torch
    import transformers

    d = tiny()
    ours = run(d, IDS)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_router_logits=True)
    for layer, logits in zip((1, 3), out.router_logits, strict=True):
        top, chosen = torch.topk(logits.reshape(len(IDS), -1), 2, dim=-1)
        expected = torch.zeros(len(IDS), 4).scatter_(1, chosen, torch.sigmoid(top)).numpy()
        routing = ours["layers"][layer].attention["router"]
        np.testing.assert_allclose(routing, expected, atol=1e-5)
        assert ((routing > 0).sum(-1) == 2).all()


@pytest.mark.reference
@pytest.mark.parametrize(
    ("switch", "first"),
    [
        ({"attention_chunk_size": None}, 0),  # no chunks: the rotary layers see everything
        ({"use_qk_norm": False}, 0),  # the L2 norm of the rotary layers
        ({"attn_temperature_tuning": False}, 3),  # only the NoPE layer is tuned
        ({"no_rope_layers": [1, 1, 1, 1]}, 3),  # layer 3 rotates (and is chunked) too
        ({"num_experts_per_tok": 1}, 2),  # layer 1's routing reaches layer 2's input
        ({"rope_parameters": SCOUT_ROPE}, 0),  # Scout's scaled rotary (not off: other angles)
    ],
)
def test_each_feature_switched_off_changes_the_maps(tiny, switch, first):
    """The same weights with one feature off: transformers agrees; the layers before the first
    one the feature touches keep their maps, that one's change (and the residual stream carries
    the change on)."""
    on = attention_maps(run(tiny(), IDS))
    off = _agrees(tiny(**switch))
    np.testing.assert_allclose(on[:first], off[:first], atol=1e-6)
    assert np.abs(on[first] - off[first]).max() > 1e-2


@pytest.mark.reference
def test_experts_are_read_one_at_a_time_and_only_when_routed_to(tiny):
    d = tiny()
    cfg = json.loads((d / "config.json").read_text())
    fam = family("llama4_text")
    w = RecordingWeights(d, fam.anchor)
    x = fam.embed(w, [5], cfg)  # one token, top 2 of 4 experts
    read = w.read_rows
    read.clear()
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        if "router" not in layer.attention:
            continue
        routed = set(np.flatnonzero(layer.attention["router"].any(axis=0)).tolist())
        gate_up = {e for n, (e,) in read if n == f"layers.{i}.feed_forward.experts.gate_up_proj"}
        down = {e for n, (e,) in read if n == f"layers.{i}.feed_forward.experts.down_proj"}
        assert gate_up == down == routed and len(routed) == 2
    assert not [n for n in w.read if n.endswith(("gate_up_proj", "experts.down_proj"))]


def test_chunked_mask_and_temperature_by_hand():
    mask = chunked_mask(6, 3)
    assert mask.astype(int).tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    args = Llama4TextArgs.parse({"floor_scale": 2, "attn_scale": 0.5})
    # positions 0..4: ⌊(p + 1)/2⌋ = 0, 1, 1, 2, 2 -> 1 + 0.5·ln(1 + that)
    expected = 1 + 0.5 * np.log1p([0, 1, 1, 2, 2])
    np.testing.assert_allclose(temperature(5, args), expected, rtol=1e-6)
    # Llama 4 Scout's defaults: 1 for the first 8,191 tokens
    assert (temperature(100, Llama4TextArgs.parse({})) == 1).all()


def test_config_defaults_and_bad_values():
    args = Llama4TextArgs.parse({"num_hidden_layers": 8})
    assert layer_types(args) == ["chunked_attention"] * 3 + ["full_attention"] + [
        "chunked_attention"
    ] * 3 + ["full_attention"]
    assert (args.num_local_experts, args.num_experts_per_tok, args.attention_chunk_size) == (
        16,
        1,
        8192,
    )
    assert (args.floor_scale, args.attn_scale, args.use_qk_norm) == (8192, 0.1, True)
    # Meta's configs write attn_temperature_tuning: 4 (transformers reads it as true)
    assert Llama4TextArgs.parse({"attn_temperature_tuning": 4}).attn_temperature_tuning == 4
    with pytest.raises(InputError, match="attn_temperature_tuning must be true, false or an int"):
        Llama4TextArgs.parse({"attn_temperature_tuning": "yes"})
    no_chunks = Llama4TextArgs.parse({"num_hidden_layers": 4, "attention_chunk_size": None})
    assert layer_types(no_chunks) == ["full_attention"] * 4
    with pytest.raises(InputError, match="no_rope_layers lists 2 layers, num_hidden_layers is 4"):
        Llama4TextArgs.parse({"num_hidden_layers": 4, "no_rope_layers": [1, 0]})
    with pytest.raises(InputError, match="attn_scale must be a positive finite number"):
        Llama4TextArgs.parse({"attn_scale": -1})
    with pytest.raises(InputError, match="chunked_attention layers need attention_chunk_size"):
        Llama4TextArgs.parse(
            {
                "num_hidden_layers": 1,
                "attention_chunk_size": None,
                "layer_types": ["chunked_attention"],
            }
        )


# -- torch-free: the committed fixture (scripts/make_decoder_fixtures.py) ----------------------


def test_fixture_matches_transformers_without_torch():
    expected = np.load(FIXTURE / "expected.npz")
    ids = expected["ids"].tolist()
    ours = run(FIXTURE, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape == (4, 4, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"][-3:], expected["logits"], atol=1e-4)


def test_the_language_model_of_a_multimodal_checkpoint(tmp_path):
    """model_type llama4 (the hub's Scout and Maverick): its text_config, and the tensors under
    language_model. (the LM head too); the vision tower's tensors are not read."""
    from safetensors.numpy import save_file

    cfg = json.loads((FIXTURE / "config.json").read_text())
    w = SafetensorsWeights(FIXTURE, "embed_tokens.weight")
    tensors = {(name if name == "lm_head.weight" else "model." + name): w[name] for name in w}
    tensors = {"language_model." + name: t for name, t in tensors.items()}
    tensors["vision_model.patch_embedding.linear.weight"] = np.zeros((8, 4), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    wrapped = {"model_type": "llama4", "text_config": cfg, "vision_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(wrapped))
    ids = np.load(FIXTURE / "expected.npz")["ids"].tolist()
    ours, original = run(tmp_path, ids), run(FIXTURE, ids)
    np.testing.assert_array_equal(attention_maps(ours), attention_maps(original))
    np.testing.assert_array_equal(ours["logits"], original["logits"])  # its own LM head
    with pytest.raises(InputError, match="a llama4 checkpoint needs a text_config object"):
        family("llama4").dims({"model_type": "llama4"})


def test_steps_say_which_layers_are_nope_chunked_and_tuned():
    import attn_cli

    trace = attn_cli.load_model(FIXTURE).trace("the cat sat on the mat")
    arch = trace.config["architecture"]
    assert arch["nope_layers"] == [3] and arch["attention_chunk_size"] == 4
    assert arch["layer_types"][:3] == ["chunked_attention"] * 3
    steps = {(s.layer, s.name): s for s in trace.steps if s.head in (None, 0)}
    assert "Chunked attention" in steps[(0, "W_masked")].description
    assert "NoPE" in steps[(3, "W_masked")].description
    assert "temperature tuning" in steps[(3, "Q_temp")].description
    assert "no learned scale" in steps[(0, "Q_norm")].description
    assert "sigmoid" in steps[(1, "router")].description
