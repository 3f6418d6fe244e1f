"""Modern decoders in numpy against transformers (eager attention, float32).

transformers builds a random tiny model of every family (hidden 64, 3 layers, 4 query heads on
2 key/value heads, weights large enough that attention is far from uniform), saves it in
bfloat16 (some sharded), and runs it in float32 from those files; our families run on the same
files. Every attention map must agree within 1e-4 and the final logits within 1e-3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import require
from tests.decoder_utils import (
    TINY,
    attention_maps,
    build_random_model,
    built_once,
    family,
    reference,
    run,
)

SHARDED = {"qwen2", "gemma2", "phi3"}
IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]  # 14 tokens > every window (4)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """model_type -> directory of a random bf16 checkpoint, built once per session."""
    require("torch")
    require("transformers")

    def build(d: Path, model_type: str) -> None:
        build_random_model(model_type, d, shard="60KB" if model_type in SHARDED else None)

    return built_once(tmp_path_factory, build)


@pytest.mark.reference
@pytest.mark.parametrize("model_type", sorted(TINY))
def test_every_attention_map_and_the_logits_match_transformers(tiny_models, model_type):
    d = tiny_models(model_type)
    assert (d / "model.safetensors.index.json").is_file() == (model_type in SHARDED)
    ref = reference(d, IDS)
    ours = run(d, IDS)
    maps = attention_maps(ours)
    cfg = json.loads((d / "config.json").read_text())
    assert maps.shape == (3, 4, len(IDS), len(IDS))
    assert ref["attentions"].shape == maps.shape
    # far from uniform: the mean row entropy is well below a uniform causal row's
    causal_uniform = np.mean([np.log(i + 1) for i in range(len(IDS))])
    entropy = -(maps * np.log(np.where(maps > 0, maps, 1.0))).sum(-1).mean()
    assert entropy < 0.8 * causal_uniform
    for layer in range(3):
        for head in range(4):
            np.testing.assert_allclose(
                maps[layer, head],
                ref["attentions"][layer, head],
                atol=1e-4,
                err_msg=f"{model_type} layer {layer} head {head}",
            )
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-3)
    # the steps that lead there are recorded: masks, stages, grouped heads
    record = ours["layers"][0].attention
    assert record["Q"].shape == (4, len(IDS), cfg.get("head_dim") or 16)
    assert record["K"].shape[0] == 2 and record["V"].shape[0] == 2
    names = [s.name for s in record.stages if s.name[:2] in ("Q_", "K_")]
    qk = ["Q_norm", "K_norm", "Q_rot", "K_rot"]
    assert names == (qk if model_type in ("qwen3", "gemma3_text") else qk[2:])
    assert np.isneginf(record["W_masked"][0, 0, 1:]).all()
    assert ("W_capped" in record) == (model_type == "gemma2")


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "gemma2", "gemma3_text", "phi3"])
def test_sliding_window_layers_hide_tokens_further_back(tiny_models, model_type):
    d = tiny_models(model_type)
    ours = run(d, IDS)
    cfg = json.loads((d / "config.json").read_text())
    kinds = cfg.get("layer_types") or ["sliding_attention"] * 3
    n = len(IDS)
    i, j = np.indices((n, n))
    for layer, kind in enumerate(kinds):
        w = ours["layers"][layer].attention.weights
        outside = j > i if kind == "full_attention" else (j > i) | (j <= i - 4)
        assert (w[:, outside] == 0).all(), (model_type, layer, kind)
        assert (w[:, ~outside] > 0).all(), (model_type, layer, kind)
    assert "sliding_attention" in kinds


def _hub_style(cfg: dict) -> dict:
    """The same config as hub checkpoints write it: rope_theta / rope_scaling (Gemma 3:
    rope_local_base_freq), no rope_parameters."""
    hub = dict(cfg)
    params = hub.pop("rope_parameters")
    if "full_attention" in params:  # Gemma 3: per layer type
        full, local = dict(params["full_attention"]), params["sliding_attention"]
        hub["rope_theta"] = full.pop("rope_theta")
        hub["rope_local_base_freq"] = local["rope_theta"]
        hub["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
    else:
        params = dict(params)
        hub["rope_theta"] = params.pop("rope_theta")
        kind = params.pop("rope_type", "default")
        hub["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
    return hub


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3_text"])
def test_hub_style_and_transformers5_style_rope_keys_give_the_same_numbers(
    tiny_models, tmp_path, model_type
):
    d = tiny_models(model_type)
    cfg = json.loads((d / "config.json").read_text())
    assert "rope_parameters" in cfg  # transformers 5 writes this form
    hub = tmp_path / "hub"
    shutil.copytree(d, hub)
    (hub / "config.json").write_text(json.dumps(_hub_style(cfg)))
    new, old = run(d, IDS), run(hub, IDS)
    np.testing.assert_array_equal(attention_maps(new), attention_maps(old))
    np.testing.assert_array_equal(new["logits"], old["logits"])
    # and transformers reads the hub-style file to the same model
    np.testing.assert_allclose(old["logits"], reference(hub, IDS)["logits"], atol=1e-3)


@pytest.mark.reference
def test_float16_checkpoints_are_widened_exactly(tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    src = tmp_path / "bf16"
    build_random_model("llama", src)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float16)
    f16 = tmp_path / "f16"
    model.save_pretrained(f16)
    ours, ref = run(f16, IDS), reference(f16, IDS)
    np.testing.assert_allclose(attention_maps(ours), ref["attentions"], atol=1e-4)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-3)


@pytest.mark.reference
@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_parameters": {"rope_type": "mrope", "rope_theta": 1e4}}, "'mrope'"),
        (
            {
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 1e4,
                    "short_factor": [1.0] * 3,
                    "long_factor": [1.0] * 8,
                }
            },
            "short_factor must be 8 positive numbers",
        ),
        (
            {"rope_parameters": None, "rope_scaling": {"type": "dynamic"}},
            "'dynamic' needs 'factor'",
        ),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_act": "tanhshrink"}, "tanhshrink"),
        ({"hidden_size": 32}, "shape"),
    ],
)
def test_unsupported_configs_are_refused_in_one_line(tiny_models, change, message):
    d = tiny_models("llama")
    cfg = {**json.loads((d / "config.json").read_text()), **change}
    with pytest.raises(InputError, match=message):
        run(d, IDS, cfg)


def test_every_family_is_registered():
    for model_type in (
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
    ):
        fam = family(model_type)
        assert fam.causal and fam.logits is not None
        assert "input_layernorm" in fam.wording.x_formula
    assert "sliding" in family("gemma2").wording.mask


@pytest.mark.reference
def test_gemma_legacy_gelu_means_the_tanh_gelu_as_in_transformers(tiny_models, tmp_path):
    d = tiny_models("gemma")
    legacy = tmp_path / "legacy"
    shutil.copytree(d, legacy)
    cfg = json.loads((d / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    ours = run(legacy, IDS)
    np.testing.assert_array_equal(ours["logits"], run(d, IDS)["logits"])
    np.testing.assert_allclose(ours["logits"], reference(legacy, IDS)["logits"], atol=1e-3)


@pytest.mark.reference
def test_multimodal_gemma3_runs_its_language_model(tmp_path):
    """model_type gemma3 (Gemma 3 4B/12B/27B): the text_config's language model, its weights
    under language_model.model.*, next to a vision tower that text never reaches."""
    require("torch")
    require("transformers")
    from tests.decoder_utils import build_gemma3_multimodal

    d = tmp_path / "mm"
    cfg = build_gemma3_multimodal(d)
    assert cfg["model_type"] == "gemma3" and "text_config" in cfg
    ours, ref = run(d, IDS), reference(d, IDS)
    np.testing.assert_allclose(attention_maps(ours), ref["attentions"], atol=1e-4)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-3)
    # hub configs leave out values equal to transformers' defaults: the same numbers without them
    text = dict(cfg["text_config"])
    for key in ("rms_norm_eps", "hidden_activation", "attention_bias",
                "final_logit_softcapping", "attn_logit_softcapping", "tie_word_embeddings"):  # fmt: skip
        text.pop(key)
    short = run(d, IDS, {**cfg, "text_config": text})
    np.testing.assert_array_equal(short["logits"], ours["logits"])


# Scaled rotary embeddings, each against transformers: 14 tokens run past the (tiny) original
# lengths, so the long-context branch of each type is the one exercised.
SCALED_ROPE = {
    "llama-yarn": (
        "llama",
        {
            "rope_type": "yarn",
            "rope_theta": 1e4,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "llama-yarn-mscale": (
        "llama",
        {
            "rope_type": "yarn",
            "rope_theta": 1e4,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
            "beta_fast": 16,
            "beta_slow": 2,
        },
    ),
    "llama-dynamic": ("llama", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
    "qwen2-yarn": (
        "qwen2",
        {
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "phi3-longrope": (
        "phi3",
        {
            "rope_type": "longrope",
            "rope_theta": 1e4,
            "short_factor": [1.0, 1.2, 1.5, 2.0],
            "long_factor": [1.0, 2.5, 6.0, 11.0],
        },
    ),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(SCALED_ROPE))
def test_scaled_rotary_embeddings_match_transformers(tmp_path, case):
    require("torch")
    require("transformers")
    model_type, rope = SCALED_ROPE[case]
    extra: dict = {
        "rope_parameters": {**TINY.get(model_type, {}).get("rope_parameters", {}), **rope}
    }
    if case == "llama-dynamic":
        extra["max_position_embeddings"] = 8  # 14 tokens: past it, so θ grows
    if model_type == "phi3":
        extra |= {"max_position_embeddings": 64, "original_max_position_embeddings": 8}
    scaled, plain = tmp_path / "scaled", tmp_path / "plain"
    build_random_model(model_type, scaled, **extra)
    build_random_model(model_type, plain)  # the same weights (same seed), default-style rope
    ours, ref = run(scaled, IDS), reference(scaled, IDS)
    maps = attention_maps(ours)
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-4)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-3)
    # not vacuous: the scaling changed the maps
    assert np.abs(maps - attention_maps(run(plain, IDS))).max() > 1e-2
    if model_type == "phi3":  # 6 tokens are within the original length: the short factors
        short = IDS[:6]
        np.testing.assert_allclose(
            attention_maps(run(scaled, short)), reference(scaled, short)["attentions"], atol=1e-4
        )


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["su", "longrope"])
def test_phi3_reads_su_and_the_default_original_length_as_transformers_does(tmp_path, kind):
    """The first 128k Phi-3 checkpoints call LongRoPE 'su'; a config without
    original_max_position_embeddings means transformers' Phi3Config default, 4096 (so 14
    tokens use the short factors, and cos/sin grow by √(1 + ln 2 / ln 4096))."""
    require("torch")
    require("transformers")
    d = tmp_path / "phi3"
    cfg = build_random_model("phi3", d, max_position_embeddings=8192)
    rope = {"type": kind, "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 3.0, 5.0, 9.0]}
    if kind == "su":  # transformers 5 reads 'su' only with the length beside it
        rope["original_max_position_embeddings"] = 4096
    drop = ("rope_parameters", "original_max_position_embeddings")
    hub = {k: v for k, v in cfg.items() if k not in drop}
    hub |= {"rope_scaling": rope, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    (d / "config.json").write_text(json.dumps(hub))
    ours, ref = run(d, IDS), reference(d, IDS)
    np.testing.assert_allclose(attention_maps(ours), ref["attentions"], atol=1e-4)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-3)
    rope_info = ours["family"].describe(hub)["rope"]["sliding_attention"]
    assert rope_info["type"] == "longrope"
    assert rope_info["original_max_position_embeddings"] == 4096
    assert rope_info["attention_factor"] == pytest.approx((1 + np.log(2) / np.log(4096)) ** 0.5)
