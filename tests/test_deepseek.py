"""DeepSeek-V2 / V3 in numpy against transformers' DeepseekV2/V3ForCausalLM (eager attention,
float32 from bf16 safetensors): multi-head latent attention (low-rank queries or not, the latent
c_kv and the shared rotary key k_pe, interleaved rotary, YaRN's mscale on the softmax scale),
shared and routed experts with V2's softmax (greedy or group-limited) and V3's bias-corrected
sigmoid routing, a dense first layer. Each feature switched off changes the maps or the logits.
The same models written as llama.cpp's converter writes "deepseek2" GGUF give the same maps.

transformers builds tiny random models (hidden 64, 3 layers, 4 heads with qk_nope 8 + qk_rope 4
and v_head_dim 6, kv_lora_rank 16, 8 experts in 4 groups, top 2, one shared expert)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.deepseek import DeepseekV2Args, DeepseekV3Args, route
from attn_cli.models.weights import SafetensorsWeights
from tests.conftest import ROOT, require
from tests.decoder_utils import (
    RecordingWeights,
    agrees_with_transformers,
    attention_maps,
    build_random_model,
    built_once,
    family,
    gguf_byte_tokenizer,
    gguf_decoder_header,
    gguf_finish,
    gguf_weights,
    rewrite_weights,
    run,
    run_gguf,
)

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]
YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,  # × original = max_position_embeddings (256)
    "original_max_position_embeddings": 64,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
}
MLA = dict(
    num_key_value_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=6,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    moe_intermediate_size=16,
    first_k_dense_replace=1,
    rope_parameters=YARN,
)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # V3: low-rank queries, sigmoid + bias routing in groups, normalised, × 2.5
    "v3": ("deepseek_v3", dict(q_lora_rank=24)),
    # V3 without the query latent, rotate-half rotary (rope_interleave false), no dense layer
    "v3_plain": (
        "deepseek_v3",
        dict(q_lora_rank=None, rope_interleave=False, first_k_dense_replace=0),
    ),
    # V2: full-rank queries, softmax routing over all experts (greedy), × 1.5
    "v2": ("deepseek_v2", dict(q_lora_rank=None, routed_scaling_factor=1.5)),
    # V2: low-rank queries, attention and (dense and shared) MLP biases, group-limited greedy
    # routing (both experts from the one group whose best expert scores highest)
    "v2_grouped": (
        "deepseek_v2",
        dict(
            q_lora_rank=24,
            attention_bias=True,
            mlp_bias=True,
            topk_method="group_limited_greedy",
            topk_group=1,
        ),
    ),
}
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")

    def build(d: Path, variant: str) -> None:
        model_type, extra = VARIANTS[variant]
        build_random_model(model_type, d, overrides={**MLA, **extra})
        if model_type == "deepseek_v3":
            rewrite_weights(d, strong_bias)

    return built_once(tmp_path_factory, build)


def _copy(src: Path, dst: Path, **config: Any) -> Path:
    """The checkpoint in `src` with config values changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def strong_bias(name: str, t: Any) -> Any:
    """V3's e_score_correction_bias drawn with σ 1 (sigmoid scores lie in (0, 1): a bias of
    that size moves the choice)."""
    import torch

    if not name.endswith("e_score_correction_bias"):
        return t
    gen = torch.Generator().manual_seed(7)
    return torch.randn(t.shape, generator=gen).to(t.dtype)


def _agrees(d: Path) -> dict[str, Any]:
    """Every map within 1e-5 of transformers, the logits within 1e-4; our result."""
    return agrees_with_transformers(d, IDS, 3)[0]


@pytest.mark.reference
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_map_and_the_logits_match_transformers(tiny, variant):
    ours = _agrees(tiny(variant))
    dense = VARIANTS[variant][1].get("first_k_dense_replace", 1)
    for i, layer in enumerate(ours["layers"]):
        record = layer.attention
        names = [s.name for s in record.stages]
        latent = ["c_q"] if VARIANTS[variant][1]["q_lora_rank"] else []
        assert names[: 4 + len(latent)] == ["X", *latent, "c_kv", "k_pe", "Q"]
        assert record["c_kv"].shape == (len(IDS), 16) and record["k_pe"].shape == (len(IDS), 4)
        # every head's key ends in the same rotary key; its first 8 numbers are its own
        k = record["K"]
        assert k.shape == (4, len(IDS), 12) and record["V"].shape == (4, len(IDS), 6)
        np.testing.assert_array_equal(k[0, :, 8:], k[3, :, 8:])
        np.testing.assert_array_equal(k[0, :, 8:], record["k_pe"])
        assert np.abs(k[0, :, :8] - k[1, :, :8]).max() > 0.1
        assert ("router" in record) == (i >= dense)


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["v3", "v2", "v2_grouped"])
def test_router_gives_each_token_its_experts_weights_as_transformers(tiny, variant):
    import torch
    import transformers

    d = tiny(variant)
    ours = run(d, IDS)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager"
    )
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.register_forward_hook(
                lambda _m, _in, out, i=i: seen.__setitem__(i, (out[1], out[2]))
            )
    with torch.no_grad():
        model(torch.tensor([IDS]))
    assert sorted(seen) == [1, 2]
    for i, (weights, chosen) in seen.items():
        expected = np.zeros((len(IDS), 8), dtype=np.float32)
        np.put_along_axis(expected, chosen.numpy(), weights.numpy(), axis=-1)
        routing = ours["layers"][i].attention["router"]
        np.testing.assert_allclose(routing, expected, atol=1e-5)
        assert ((routing != 0).sum(-1) == 2).all()
        if variant == "v3":  # normalised, then × routed_scaling_factor 2.5
            np.testing.assert_allclose(routing.sum(-1), 2.5, atol=1e-5)


@pytest.mark.reference
def test_yarn_mscale_on_the_softmax_scale_changes_the_maps(tiny, tmp_path):
    d = tiny("v3")
    rope = {k: v for k, v in YARN.items() if k not in ("mscale", "mscale_all_dim")}
    off = _copy(d, tmp_path / "off", rope_parameters=rope)
    with_mscale, without = run(d, IDS), _agrees(off)
    m2 = (0.1 * 0.707 * np.log(4.0) + 1) ** 2
    s_on = with_mscale["layers"][0].attention.facts["scale"]
    s_off = without["layers"][0].attention.facts["scale"]
    assert s_on == pytest.approx(s_off * m2) and s_off == pytest.approx(12**-0.5)
    assert np.abs(attention_maps(with_mscale) - attention_maps(without)).max() > 0.02


@pytest.mark.reference
def test_the_shared_rotary_key_and_its_layout_change_the_maps(tiny, tmp_path):
    d = tiny("v3")
    maps = attention_maps(run(d, IDS))
    # the rotary key k_pe zeroed (its rows of kv_a_proj_with_mqa): position leaves the keys
    no_pe = tmp_path / "no_pe"
    shutil.copytree(d, no_pe)
    rewrite_weights(
        no_pe,
        lambda name, t: (
            t.clone().index_fill_(0, __import__("torch").arange(16, 20), 0.0)
            if name.endswith("kv_a_proj_with_mqa.weight")
            else t
        ),
    )
    assert np.abs(attention_maps(_agrees(no_pe)) - maps).max() > 0.02
    # the same weights read as rotate-half pairs instead of interleaved ones
    halves = _copy(d, tmp_path / "halves", rope_interleave=False)
    assert np.abs(attention_maps(_agrees(halves)) - maps).max() > 0.02


@pytest.mark.reference
def test_routing_features_change_the_experts_and_the_logits(tiny, tmp_path):
    d = tiny("v3")
    ours = run(d, IDS)
    routing = ours["layers"][1].attention["router"]
    # without the bias correction the choice changes
    no_bias = tmp_path / "no_bias"
    shutil.copytree(d, no_bias)
    rewrite_weights(no_bias, lambda n, t: t * 0 if n.endswith("e_score_correction_bias") else t)
    plain = _agrees(no_bias)
    assert ((plain["layers"][1].attention["router"] != 0) != (routing != 0)).any()
    # every group allowed: experts outside the best two groups are chosen too
    every = _agrees(_copy(d, tmp_path / "every", topk_group=4))
    assert ((every["layers"][1].attention["router"] != 0) != (routing != 0)).any()
    # without normalisation the weights sum to 2.5 × their sigmoid scores' sum, not 2.5
    raw = _agrees(_copy(d, tmp_path / "raw", norm_topk_prob=False))
    assert np.abs(raw["layers"][1].attention["router"].sum(-1) - 2.5).max() > 0.1
    # the shared expert zeroed changes the logits
    no_shared = tmp_path / "no_shared"
    shutil.copytree(d, no_shared)
    rewrite_weights(no_shared, lambda n, t: t * 0 if "shared_experts" in n else t)
    assert np.abs(_agrees(no_shared)["logits"] - ours["logits"]).max() > 0.05


@pytest.mark.reference
def test_v2_group_limit_changes_the_choice(tiny, tmp_path):
    d = tiny("v2_grouped")
    grouped = run(d, IDS)["layers"][2].attention["router"]
    greedy = _agrees(_copy(d, tmp_path / "greedy", topk_method="greedy"))
    assert ((greedy["layers"][2].attention["router"] != 0) != (grouped != 0)).any()


# -- GGUF: llama.cpp's "deepseek2", kv_b_proj split into attn_k_b and attn_v_b -----------------


def write_deepseek2_gguf(path: Path, d: Path, split: bool = True, experts: str = "F32") -> Path:
    """The bf16 checkpoint in `d` written as llama.cpp's convert_hf_to_gguf.py DeepseekV2Model
    writes it: names by gguf-py's TensorNameMap, experts stacked into 3-D tensors, kv_b_proj
    split per head into k_b (transposed) and v_b (`split` False: one attn_kv_b, as converters
    before the split wrote it), e_score_correction_bias as exp_probs_b.bias, MLA as MQA in the
    metadata; every tensor F32 (the experts in `experts` where their rows are whole blocks:
    "Q8_0" quantises gate and up)."""
    gguf = require("gguf")
    from tests.test_gguf_writer import byte_vocab

    cfg = json.loads((d / "config.json").read_text())
    n_layer, n_head, hidden = (
        cfg[k] for k in ("num_hidden_layers", "num_attention_heads", "hidden_size")
    )
    nope, rope_dim, v_dim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    r = cfg["kv_lora_rank"]
    w = SafetensorsWeights(d, "embed_tokens.weight")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, n_layer)
    out = gguf.GGUFWriter(str(path), "deepseek2")
    gguf_decoder_header(out, cfg, 1 if split else n_head)
    out.add_expert_used_count(cfg["num_experts_per_tok"])
    out.add_file_type(0)
    out.add_leading_dense_block_count(cfg["first_k_dense_replace"])
    out.add_vocab_size(cfg["vocab_size"])
    if cfg.get("q_lora_rank") is not None:
        out.add_q_lora_rank(cfg["q_lora_rank"])
    out.add_kv_lora_rank(r)
    if split:
        out.add_key_length(r + rope_dim)
        out.add_value_length(r)
        out.add_key_length_mla(nope + rope_dim)
        out.add_value_length_mla(v_dim)
    else:
        out.add_key_length(nope + rope_dim)
        out.add_value_length(v_dim)
    out.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    out.add_expert_count(cfg["n_routed_experts"])
    out.add_expert_shared_count(cfg["n_shared_experts"])
    out.add_expert_weights_scale(float(cfg["routed_scaling_factor"]))
    sigmoid = cfg["model_type"] == "deepseek_v3"
    out.add_expert_weights_norm(bool(cfg["norm_topk_prob"]) if sigmoid else False)
    out.add_expert_gating_func(
        gguf.ExpertGatingFuncType.SIGMOID if sigmoid else gguf.ExpertGatingFuncType.SOFTMAX
    )
    if sigmoid or cfg.get("topk_method") == "group_limited_greedy":
        out.add_expert_group_count(cfg["n_group"])
        out.add_expert_group_used_count(cfg["topk_group"])
    out.add_rope_dimension_count(rope_dim)
    rope = cfg["rope_parameters"]
    if rope.get("rope_type") == "yarn":
        out.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        out.add_rope_scaling_factor(rope["factor"])
        out.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        out.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
    toks = byte_vocab(cfg["vocab_size"])[0]
    gguf_byte_tokenizer(
        out, cfg["vocab_size"], "gpt-2", [f"{toks[3]} {toks[4]}"]
    )  # llama.cpp needs the key
    tensors: dict[str, np.ndarray] = {}
    for name in w:
        full = name if name == "lm_head.weight" else "model." + name
        data = w[name]
        if ".mlp.experts." in name:
            layer, rest = name.split(".mlp.experts.")
            e, kind = rest.split(".", 1)
            stacked = f"model.{layer}.mlp.experts.{kind}"
            tensors.setdefault(
                stacked, np.zeros((cfg["n_routed_experts"], *data.shape), np.float32)
            )
            tensors[stacked][int(e)] = data
            continue
        if name.endswith("e_score_correction_bias"):
            full = full.replace("e_score_correction_bias", "e_score_correction.bias")
        if name.endswith("kv_b_proj.weight") and split:
            kv_b = data.reshape(n_head, nope + v_dim, r)
            k_b, v_b = kv_b[:, :nope], kv_b[:, nope:]
            tensors[full.replace("kv_b_proj", "k_b_proj")] = k_b.transpose(0, 2, 1)
            tensors[full.replace("kv_b_proj", "v_b_proj")] = v_b
            continue
        tensors[full] = data
    for full, data in tensors.items():
        new = tmap.get_name(full, try_suffixes=(".weight", ".bias"))
        assert new is not None, full
        data = np.ascontiguousarray(data, dtype=np.float32)
        if new.endswith("_exps.weight") and experts != "F32" and data.shape[-1] % 32 == 0:
            q = getattr(gguf.GGMLQuantizationType, experts)
            out.add_tensor(new, gguf.quants.quantize(data, q), raw_dtype=q)
        else:
            out.add_tensor(new, data)
    return gguf_finish(out, path)


def _gguf_maps(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from attn_cli.gguf import open_gguf

    ckpt = open_gguf(path)
    return attention_maps(run_gguf(ckpt, IDS)), ckpt.config


@pytest.mark.reference
@pytest.mark.parametrize(("variant", "split"), [("v3", True), ("v2_grouped", True), ("v2", False)])
def test_gguf_gives_the_original_maps(tiny, tmp_path, variant, split):
    d = tiny(variant)
    from attn_cli.gguf.locate import describe

    path = write_deepseek2_gguf(tmp_path / f"{variant}.gguf", d, split)
    maps, cfg = _gguf_maps(path)
    assert cfg["model_type"] == VARIANTS[variant][0]
    assert describe(path, variant, "test").family == VARIANTS[variant][0]  # `attn-cli models`
    original = json.loads((d / "config.json").read_text())
    for key in (
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "kv_lora_rank",
        "q_lora_rank",
    ):
        assert cfg[key] == original[key], key
    np.testing.assert_allclose(maps, attention_maps(run(d, IDS)), atol=1e-6)


@pytest.mark.reference
def test_deepseek2_gguf_logits_equal_llama_cpp(tiny, tmp_path):
    """llama.cpp itself runs the file (its interleaved rotary, its mscale from
    yarn_log_multiplier, its grouped sigmoid routing with exp_probs_b, k_b and v_b): its logits
    equal ours up to its float16 key/value cache."""
    from tests.conftest import llama

    d = tiny("v3")
    path = write_deepseek2_gguf(tmp_path / "v3.gguf", d)
    llm = llama(str(path), logits_all=True, n_ctx=64, verbose=False)
    llm.eval(IDS)
    ref = np.array(llm.scores[: len(IDS)], dtype=np.float64)
    ours = run(d, IDS)["logits"]
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(ours - ref).max() < 0.05 and ours.std() > 1.0
    assert min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True)) > 0.9999


@pytest.mark.reference
def test_gguf_quantised_experts_are_read_one_at_a_time(tiny, tmp_path):
    """Q8_0 experts stacked [E, out, in]: one expert's rows are dequantised when a token routes
    to it, equal to that expert of the whole tensor; the maps stay close to the original's."""
    from attn_cli.gguf import open_gguf

    d = tiny("v3")
    path = write_deepseek2_gguf(tmp_path / "q8.gguf", d, experts="Q8_0")
    ckpt = open_gguf(path)
    cfg = ckpt.config
    assert cfg["gguf"]["tensor_types"]["Q8_0"] == 2 * 2  # gate and up, two MoE layers
    stacked = ckpt.weights.gguf_tensor("blk.1.ffn_gate_exps.weight")
    assert stacked.shape == (8, 16, 64)
    whole = gguf_weights(ckpt)
    for e in (0, 5, 7):
        np.testing.assert_array_equal(
            whole[f"layers.1.mlp.experts.{e}.gate_proj.weight"], stacked[e]
        )
    read: list[str] = []

    class Recording:
        def __init__(self, w: Any) -> None:
            self.w = w

        def __getitem__(self, name: str) -> np.ndarray:
            read.append(name)
            return self.w[name]

        def __contains__(self, name: object) -> bool:
            return name in self.w

        def shape(self, name: str) -> tuple[int, ...]:
            return self.w.shape(name)

        def rows(self, name: str, ids: list[int]) -> np.ndarray:
            return self.w.rows(name, ids)

    fam = family("deepseek_v3")
    w = Recording(whole)
    x = fam.embed(w, IDS[:3], cfg)
    read.clear()
    layers = list(fam.layers(w, x, cfg))
    for i in (1, 2):
        routed = set(np.flatnonzero(layers[i].attention["router"].any(axis=0)).tolist())
        for kind in ("gate", "up", "down"):
            prefix, suffix = f"layers.{i}.mlp.experts.", f".{kind}_proj.weight"
            got = {
                int(n[len(prefix) : -len(suffix)])
                for n in read
                if n.startswith(prefix) and n.endswith(suffix)
            }
            assert got == routed
        assert len(routed) < 8
    maps, _ = _gguf_maps(path)
    np.testing.assert_allclose(maps, attention_maps(run(d, IDS)), atol=2e-2)


# -- torch-free: the committed fixtures (scripts/make_decoder_fixtures.py) --------------------


@pytest.mark.parametrize("name", ["tiny_deepseek_v2", "tiny_deepseek_v3"])
def test_fixture_matches_transformers(name):
    from tokenizers import Tokenizer

    from tests.test_decoders_fixtures import SENTENCE

    d = FIXTURES / name
    expected = np.load(d / "expected.npz")
    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(SENTENCE).ids
    assert ids == expected["ids"].tolist()
    ours = run(d, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    last = expected["logits"].shape[0]
    np.testing.assert_allclose(ours["logits"][-last:], expected["logits"], atol=1e-4)
    assert "router" not in ours["layers"][0].attention and "router" in ours["layers"][1].attention


def test_kimi_k2_runs_deepseek_v3():
    """Kimi K2's config.json says model_type kimi_k2 for DeepSeek-V3's architecture."""
    d = FIXTURES / "tiny_deepseek_v3"
    cfg = json.loads((d / "config.json").read_text())
    ids = np.load(d / "expected.npz")["ids"].tolist()
    kimi = run(d, ids, {**cfg, "model_type": "kimi_k2"})
    np.testing.assert_array_equal(attention_maps(kimi), attention_maps(run(d, ids, cfg)))


@pytest.mark.parametrize("name", ["tiny_deepseek_v2", "tiny_deepseek_v3"])
def test_hub_style_config_keys_give_the_same_maps(name):
    """The hub's DeepSeek configs write rope_theta and rope_scaling {"type": "yarn", …}, and
    keys transformers does not read (scoring_func, topk_method "noaux_tc", aux_loss_alpha)."""
    d = FIXTURES / name
    cfg = json.loads((d / "config.json").read_text())
    rope = dict(cfg["rope_parameters"])
    hub = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    hub["rope_theta"] = rope.pop("rope_theta")
    hub["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    hub.update(scoring_func="sigmoid", aux_loss_alpha=0.001, moe_layer_freq=1)
    if name.endswith("v3"):
        hub["topk_method"] = "noaux_tc"
    ids = np.load(d / "expected.npz")["ids"].tolist()
    np.testing.assert_array_equal(
        attention_maps(run(d, ids, hub)), attention_maps(run(d, ids, cfg))
    )


def test_experts_are_read_only_when_routed_to():
    fam = family("deepseek_v3")
    d = FIXTURES / "tiny_deepseek_v3"
    cfg = json.loads((d / "config.json").read_text())
    w = RecordingWeights(d, fam.anchor)
    ids = [5, 17, 3]
    x = fam.embed(w, ids, cfg)
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        if i < cfg["first_k_dense_replace"]:
            continue
        routed = set(np.flatnonzero(layer.attention["router"].any(axis=0)).tolist())
        for kind in ("gate_proj", "up_proj", "down_proj"):
            got = {
                int(n.split(".")[4])
                for n in w.read
                if n.startswith(f"layers.{i}.mlp.experts.") and n.endswith(kind + ".weight")
            }
            assert got == routed
        assert len(routed) < cfg["n_routed_experts"]


def test_fp8_checkpoints_are_refused_in_one_line():
    """DeepSeek-V3's and Kimi K2's hub weights are FP8 blocks with a weight_scale_inv each."""

    class Fp8(SafetensorsWeights):
        def __contains__(self, name: object) -> bool:
            return str(name).endswith("weight_scale_inv") or super().__contains__(name)

    fam = family("deepseek_v3")
    d = FIXTURES / "tiny_deepseek_v3"
    cfg = json.loads((d / "config.json").read_text())
    with pytest.raises(InputError, match=r"FP8 blocks \(weight_scale_inv\).*fp8_cast_bf16"):
        fam.check(Fp8(d, fam.anchor), cfg)


def test_steps_name_the_latent_and_the_shared_rotary_key():
    import attn_cli

    trace = attn_cli.explain(
        "the cat sat", model=str(FIXTURES / "tiny_deepseek_v3"), layer=1, head=0
    )
    steps = {s.name: s for s in trace.steps}
    assert {"c_q", "c_kv", "k_pe", "K", "Q_rot", "K_rot", "W", "router"} <= set(steps)
    assert "shared by all" in steps["c_kv"].description
    assert steps["K"].formula == "[c_kv·W_kb⁽⁰⁾ ‖ k_pe]"
    assert "mscale²" in steps["W_scaled"].formula
    arch = trace.config["architecture"]
    assert arch["attention"] == "multi-head latent attention" and arch["dense_layers"] == [0]


@pytest.mark.parametrize(
    ("args", "change", "message"),
    [
        (DeepseekV2Args, {"num_key_value_heads": 2}, "num_key_value_heads 2 must equal"),
        (DeepseekV2Args, {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc' is not supported"),
        (DeepseekV2Args, {"num_experts_per_tok": 9}, "num_experts_per_tok 9 must be"),
        (DeepseekV3Args, {"n_group": 3}, "n_group dividing n_routed_experts 8"),
        (DeepseekV3Args, {"n_group": 8}, "needs at least 2 of the 8 experts"),
        (DeepseekV3Args, {"kv_lora_rank": 0}, "kv_lora_rank must be a positive integer, got 0"),
        (DeepseekV3Args, {"qk_rope_head_dim": 3}, "qk_rope_head_dim must be even"),
    ],
)
def test_bad_config_values_are_refused_by_name(args, change, message):
    cfg = {
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        **change,
    }
    with pytest.raises(InputError, match=message):
        args.parse(cfg)


def test_defaults_are_transformers_configs():
    # transformers leaves V2's num_experts_per_tok unset (its MoE cannot run without it)
    v2, v3 = DeepseekV2Args.parse({"num_experts_per_tok": 6}), DeepseekV3Args.parse({})
    assert (v2.vocab_size, v2.hidden_size, v2.num_attention_heads, v2.kv_heads) == (
        102400,
        4096,
        32,
        32,
    )
    assert (v2.q_lora_rank, v2.kv_lora_rank, v2.topk_method, v2.first_k_dense_replace) == (
        1536,
        512,
        "greedy",
        0,
    )
    assert (
        v3.hidden_size,
        v3.num_attention_heads,
        v3.n_routed_experts,
        v3.num_experts_per_tok,
    ) == (7168, 128, 256, 8)
    assert (v3.n_group, v3.topk_group, v3.routed_scaling_factor, v3.first_k_dense_replace) == (
        8,
        4,
        2.5,
        3,
    )
    assert v3.rope_interleave and v3.norm_topk_prob and v3.qk_head_dim == 192


def test_v3_routing_by_hand():
    """2 groups of 2 experts, top 1 group, top 2 experts: the bias moves the choice to group 1,
    the weights are the sigmoid scores without it, normalised, × 2."""
    args = DeepseekV3Args.parse(
        {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
         "routed_scaling_factor": 2.0, "num_attention_heads": 4, "num_key_value_heads": 4}
    )  # fmt: skip
    logits = np.array([[2.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    routing, scores = route(logits, args, np.array([0, 0, 2.0, 2.0], dtype=np.float32))
    np.testing.assert_allclose(routing, [[0, 0, 1.0, 1.0]], atol=1e-6)
    routing, _ = route(logits, args, np.zeros(4, dtype=np.float32))
    s = scores[0, :2]
    np.testing.assert_allclose(routing[0, :2], 2 * s / s.sum(), atol=1e-6)


def test_dense_layers_follow_first_k_dense_replace_and_moe_layer_freq():
    """DeepSeek's rule: MoE from layer first_k_dense_replace on, in layers i with
    i % moe_layer_freq == 0 (every release has 1; transformers reads only the first key)."""
    base = {"num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 5}
    assert DeepseekV3Args.parse({**base, "first_k_dense_replace": 1}).moe_layers() == [
        False, True, True, True, True,
    ]  # fmt: skip
    freq = DeepseekV3Args.parse({**base, "first_k_dense_replace": 1, "moe_layer_freq": 2})
    assert freq.moe_layers() == [False, False, True, False, True]
    dense = DeepseekV2Args.parse({**base, "n_routed_experts": None})
    assert dense.moe_layers() == [False] * 5
