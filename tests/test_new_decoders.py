"""OLMo 2 and SmolLM3 against transformers (eager attention, float32 from bf16 safetensors).

OLMo 2 normalises each sublayer's output (no input norm) and RMS-normalises q and k over the
full projection width; SmolLM3 leaves the rotary embedding out of every fourth layer (NoPE).
Each feature is switched off too, to show the maps depend on it. The same models written as
llama.cpp's converter writes them (GGUF) give the same maps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models import _decoder
from attn_cli.models.olmo2 import SPECS
from attn_cli.models.weights import SafetensorsWeights
from tests.conftest import require
from tests.decoder_utils import (
    ReplacedWeights,
    agrees_with_transformers,
    attention_maps,
    build_random_model,
    built_once,
    family,
    gguf_byte_tokenizer,
    gguf_decoder_header,
    gguf_finish,
    reference,
    run,
    run_gguf,
)

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]
TINY = {
    "olmo2": dict(num_hidden_layers=3),
    # layers 0-2 rotate, layer 3 is NoPE (no_rope_layer_interval 4, transformers' default)
    "smollm3": dict(
        num_hidden_layers=4,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")

    def build(d: Path, model_type: str, **overrides: Any) -> None:
        build_random_model(model_type, d, **TINY[model_type], **overrides)

    return built_once(tmp_path_factory, build)


def _check_against_reference(d: Path, layers: int) -> dict[str, Any]:
    ours, ref = agrees_with_transformers(d, IDS, layers)
    return {"ours": ours, "ref": ref, "maps": attention_maps(ours)}


@pytest.mark.reference
def test_olmo2_maps_and_logits_match_transformers(tiny):
    d = tiny("olmo2")
    cfg = json.loads((d / "config.json").read_text())
    # q/k norms span every head at once (4 × 16 query numbers, 2 × 16 key numbers)
    w = SafetensorsWeights(d, "embed_tokens.weight")
    assert w.shape("layers.0.self_attn.q_norm.weight") == (64,)
    assert w.shape("layers.0.self_attn.k_norm.weight") == (32,)
    assert "layers.0.input_layernorm.weight" not in w
    out = _check_against_reference(d, 3)
    record = out["ours"]["layers"][1].attention
    names = [s.name for s in record.stages]
    assert names[names.index("V") + 1 : names.index("W_raw")] == [
        "Q_norm",
        "K_norm",
        "Q_rot",
        "K_rot",
    ]
    # no input norm: X is the residual stream itself (layer 1's X is layer 0's output)
    np.testing.assert_array_equal(record["X"], out["ours"]["layers"][0].out)
    fam = family("olmo2")
    assert fam.norm == "post" and fam.attn_out_norm is not None
    g, beta, eps, rms, applies = fam.attn_out_norm(w, 1, cfg)
    np.testing.assert_array_equal(g, w["layers.1.post_attention_layernorm.weight"])
    assert beta is None and eps == cfg["rms_norm_eps"] and rms is True and applies == "attn"
    described = fam.describe(cfg) if fam.describe else {}
    assert described["qk_norm"] is True and "all heads" in described["qk_norm_width"]
    assert "before each residual sum" in described["norm_placement"]


@pytest.mark.reference
def test_olmo2_features_change_the_maps(tiny):
    """Per-head q/k norms instead of full-width ones change layer 0; norms before each sublayer
    instead of after it change the later layers: the reference check is not vacuous."""
    d = tiny("olmo2")
    cfg = json.loads((d / "config.json").read_text())
    ref = reference(d, IDS)["attentions"]
    spec = SPECS["olmo2"]
    args = spec.args.parse(cfg)
    w = SafetensorsWeights(d, "embed_tokens.weight")
    x = _decoder.embed(spec, w, IDS, args)

    def maps(variant: Any, source: Any) -> np.ndarray:
        return np.stack(
            [r.attention.weights for r in _decoder.layers(variant, source, x, args, "test")]
        )

    # per head: each head's 16 numbers normalised alone, by the first head's scale
    per_head = ReplacedWeights(
        w,
        {
            f"layers.{i}.self_attn.{n}_norm.weight": w[f"layers.{i}.self_attn.{n}_norm.weight"][:16]
            for i in range(3)
            for n in "qk"
        },
    )
    head_norm = maps(dataclasses.replace(spec, qk_norm_full=False), per_head)
    assert np.abs(head_norm[0] - ref[0]).max() > 1e-2
    # pre-norm: an input RMSNorm (unit scale) before attention and the MLP, none after them
    pre = ReplacedWeights(
        w, {f"layers.{i}.input_layernorm.weight": np.ones(64, np.float32) for i in range(3)}
    )
    pre_norm = maps(dataclasses.replace(spec, post_norm=False), pre)
    assert np.abs(pre_norm[1:] - ref[1:]).max() > 1e-2


@pytest.mark.reference
def test_smollm3_maps_and_logits_match_transformers(tiny):
    d = tiny("smollm3")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["no_rope_layers"] == [1, 1, 1, 0]  # transformers' own derivation
    out = _check_against_reference(d, 4)
    for i, layer in enumerate(out["ours"]["layers"]):
        names = [s.name for s in layer.attention.stages]
        assert ("Q_rot" in names) == (i != 3) and ("K_rot" in names) == (i != 3)
        assert layer.attention.facts["rope"] is (i != 3)
    fam = family("smollm3")
    assert fam.describe is not None and fam.describe(cfg)["nope_layers"] == [3]
    # an explicit no_rope_layers list wins over the interval
    assert fam.describe({**cfg, "no_rope_layers": [0, 1, 1, 1]})["nope_layers"] == [0]


@pytest.mark.reference
def test_smollm3_nope_layers_change_the_maps(tiny):
    """The same weights with every layer rotating: layers 0-2 equal, the NoPE layer differs."""
    nope = attention_maps(run(tiny("smollm3"), IDS))
    d = tiny("smollm3", no_rope_layers=[1, 1, 1, 1])
    all_rope = reference(d, IDS)["attentions"]
    np.testing.assert_allclose(nope[:3], all_rope[:3], atol=1e-5)
    assert np.abs(nope[3] - all_rope[3]).max() > 1e-2
    np.testing.assert_allclose(attention_maps(run(d, IDS)), all_rope, atol=1e-5)


def test_smollm3_refuses_a_bad_no_rope_list(tmp_path):
    fam = family("smollm3")
    cfg = {"model_type": "smollm3", "num_hidden_layers": 4, "no_rope_layers": [1, 1]}
    with pytest.raises(InputError, match="no_rope_layers lists 2 layers, num_hidden_layers is 4"):
        fam.dims(cfg)
    with pytest.raises(InputError, match=r"no_rope_layers must be a list of 0 or 1 per layer"):
        fam.dims({**cfg, "no_rope_layers": [1, 2, 1, 1]})


def _write_gguf(path: Path, d: Path) -> Path:
    """The bf16 checkpoint in `d` written as llama.cpp's converter writes it: tensor names by
    gguf-py's TensorNameMap, SmolLM3's q/k rows permuted as LlamaModel.permute does (OLMo 2 is
    NeoX-rotary: rows kept), every tensor F32."""
    gguf = require("gguf")
    from tests.test_gguf_writer import converter_permute

    cfg = json.loads((d / "config.json").read_text())
    arch = cfg["model_type"]
    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv, hidden = cfg["num_key_value_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    w = SafetensorsWeights(d, "embed_tokens.weight")
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layer)
    out = gguf.GGUFWriter(str(path), arch)
    gguf_decoder_header(out, cfg, n_kv)
    out.add_key_length(head_dim)
    out.add_value_length(head_dim)
    out.add_rope_dimension_count(head_dim)
    out.add_file_type(0)
    gguf_byte_tokenizer(out, cfg["vocab_size"], "gpt-2", [])
    for name in w:
        data = w["model." + name if "model." + name in w else name]
        full = name if name == "lm_head.weight" else "model." + name
        if arch == "smollm3" and name.endswith("q_proj.weight"):
            data = converter_permute(data, n_head, n_head)
        if arch == "smollm3" and name.endswith("k_proj.weight"):
            data = converter_permute(data, n_head, n_kv)
        new = tmap.get_name(full, try_suffixes=(".weight", ".bias"))
        assert new is not None, full
        out.add_tensor(new, np.ascontiguousarray(data, dtype=np.float32))
    return gguf_finish(out, path)


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["olmo2", "smollm3"])
def test_gguf_gives_the_original_maps(tiny, tmp_path, model_type):
    from attn_cli.gguf import open_gguf

    d = tiny(model_type)
    ckpt = open_gguf(_write_gguf(tmp_path / f"{model_type}.gguf", d))
    cfg = ckpt.config
    assert cfg["model_type"] == model_type
    fam = family(model_type)
    maps = attention_maps(run_gguf(ckpt, IDS))
    np.testing.assert_allclose(maps, attention_maps(run(d, IDS)), atol=1e-6)
    if model_type == "smollm3":  # llama.cpp fixes the NoPE interval at 4
        assert fam.describe is not None and fam.describe(cfg)["nope_layers"] == [3]


# -- torch-free: the committed fixtures (scripts/make_decoder_fixtures.py) --------------------


@pytest.mark.parametrize("name, layers", [("tiny_olmo2", 2), ("tiny_smollm3", 4)])
def test_fixture_matches_transformers(name, layers):
    from tokenizers import Tokenizer

    from tests.test_decoders_fixtures import FIXTURES, SENTENCE

    d = FIXTURES / name
    expected = np.load(d / "expected.npz")
    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(SENTENCE).ids
    assert ids == expected["ids"].tolist()
    ours = run(d, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape == (layers, 4, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    last = expected["logits"].shape[0]
    np.testing.assert_allclose(ours["logits"][-last:], expected["logits"], atol=1e-4)


def test_smollm3_steps_say_which_layer_has_no_position_encoding():
    import attn_cli
    from tests.test_decoders_fixtures import FIXTURES

    trace = attn_cli.load_model(FIXTURES / "tiny_smollm3").trace("the cat sat")
    assert trace.config["architecture"]["nope_layers"] == [3]
    for layer in range(4):
        steps = [s for s in trace.steps if s.layer == layer and s.head == 0]
        names = [s.name for s in steps]
        masked = next(s for s in steps if s.name == "W_masked")
        nope = "No positional encoding in this layer (NoPE)" in masked.description
        assert nope == (layer == 3) and ("Q_rot" not in names) == (layer == 3)
        raw = next(s for s in steps if s.name == "W_raw")
        assert raw.formula == ("Q·Kᵀ" if layer == 3 else "Q_rot·K_rotᵀ")


def test_olmo2_steps_say_how_it_normalises():
    import attn_cli
    from tests.test_decoders_fixtures import FIXTURES

    trace = attn_cli.load_model(FIXTURES / "tiny_olmo2").trace("the cat sat")
    steps = {s.name: s for s in trace.steps if s.layer == 1 and s.head in (None, 0)}
    assert (
        steps["X"].formula == "hidden states" and "not normalised first" in steps["X"].description
    )
    assert steps["Q_norm"].formula == "RMSNorm(Q of every head)"
    assert "all heads are normalised together" in steps["K_norm"].description
    arch = trace.config["architecture"]
    assert arch["qk_norm"] is True and "nope_layers" not in arch


@pytest.mark.reference
def test_smollm3_slides_a_window_on_its_nope_layers(tiny):
    """With use_sliding_window, SmolLM3Config makes the NoPE layers the sliding ones."""
    d = tiny("smollm3", use_sliding_window=True, sliding_window=4)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["layer_types"] == ["full_attention"] * 3 + ["sliding_attention"]
    out = _check_against_reference(d, 4)
    i, j = np.indices((len(IDS), len(IDS)))
    assert (out["maps"][3][:, j <= i - 4] == 0).all() and (out["maps"][2][:, j <= i] > 0).all()
