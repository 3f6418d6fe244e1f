"""The mixture-of-experts decoders (Mixtral, Qwen3-MoE, OLMoE) against transformers (eager
attention, float32 from bf16 safetensors): every attention map, the logits, and the `router`
step of every MoE layer (tokens × experts, as transformers' router computes it from its
router_logits). Routing switched to another top-k changes the later layers' maps; experts are
read only for the tokens routed to them; a Qwen3-MoE written as llama.cpp's converter writes
it (qwen3moe GGUF, stacked experts) gives the same maps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models import _decoder
from attn_cli.models.mixtral import MixtralArgs
from attn_cli.models.olmoe import SPECS as OLMOE_SPECS
from attn_cli.models.olmoe import OlmoeArgs
from attn_cli.models.qwen3_moe import Qwen3MoeArgs
from attn_cli.models.weights import SafetensorsWeights
from tests.conftest import ROOT, require
from tests.decoder_utils import (
    RecordingWeights,
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
    rewrite_weights,
    run,
    run_gguf,
)

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]
FIXTURES = ROOT / "tests" / "fixtures"
# 3 layers, 4 query heads on 2 key/value heads, 4 experts, top 2 (decoder_utils.COMMON)
TINY: dict[str, dict[str, Any]] = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=4),
    # layer 1 has a dense MLP (mlp_only_layers). Its q/k norms (× 2.5) make sharp maps that
    # amplify float32 rounding layer by layer: seed 2 stays within 5e-6 (seed 0 reaches 1.1e-5
    # in the last layer, while the hidden states agree to 1e-6 relative)
    "qwen3_moe": dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        head_dim=16,
        mlp_only_layers=[1],
        norm_topk_prob=True,
        seed=2,
    ),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, pad_token_id=0, eos_token_id=2),
}
# OLMoE's q/k norms (one RMSNorm over all heads, × 2.5 as drawn) put its maps at float32's
# limit: transformers' own float32 and float64 passes differ by 6e-6 to 1.2e-5 over seeds
# 0-5, and an AMD EPYC put attn-cli 1.1e-5 from transformers' float32. × 0.7 keeps the maps
# sharp (mean row maximum 0.7) and every pass within 3e-6 of the float64 answer (seeds 0-2).
QK_NORM_SCALE = {"olmoe": 0.7}
MOE_LAYERS = {"mixtral": [0, 1, 2], "qwen3_moe": [0, 2], "olmoe": [0, 1, 2]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")

    def build(d: Path, model_type: str, **overrides: Any) -> None:
        config = {**TINY[model_type], **overrides}
        seed = config.pop("seed", 0)
        build_random_model(model_type, d, seed=seed, overrides=config)
        if model_type in QK_NORM_SCALE:
            f = QK_NORM_SCALE[model_type]
            rewrite_weights(
                d, lambda k, t: t * f if k.endswith(("q_norm.weight", "k_norm.weight")) else t
            )

    return built_once(tmp_path_factory, build)


def _router_logits(d: Path) -> list[np.ndarray]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_router_logits=True)
    return [r.reshape(len(IDS), -1).numpy() for r in out.router_logits]


def _expected_routing(logits: np.ndarray, k: int, normalize: bool) -> np.ndarray:
    """transformers' TopKRouter (softmax over every expert, top k, optionally renormalised),
    in torch."""
    import torch

    probs = torch.softmax(torch.from_numpy(logits).float(), dim=-1)
    top, chosen = torch.topk(probs, k, dim=-1)
    if normalize:
        top = top / top.sum(-1, keepdim=True)
    out = torch.zeros_like(probs).scatter_(1, chosen, top)
    return out.numpy()


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "olmoe"])
def test_maps_logits_and_router_match_transformers(tiny, model_type):
    d = tiny(model_type)
    ours = agrees_with_transformers(d, IDS, 3)[0]
    routed = [i for i, layer in enumerate(ours["layers"]) if "router" in layer.attention]
    assert routed == MOE_LAYERS[model_type]
    normalize = model_type != "olmoe"  # mixtral always; qwen3_moe here by norm_topk_prob
    for i, logits in zip(routed, _router_logits(d), strict=True):
        routing = ours["layers"][i].attention["router"]
        assert routing.shape == (len(IDS), 4)
        np.testing.assert_allclose(routing, _expected_routing(logits, 2, normalize), atol=1e-5)
        assert ((routing > 0).sum(-1) == 2).all()
        sums = routing.sum(-1)
        if normalize:
            np.testing.assert_allclose(sums, 1.0, atol=1e-6)
        else:
            assert (sums < 1.0).all()  # OLMoE keeps the softmax's share: less than 1


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "olmoe"])
def test_routing_changes_the_maps(tiny, model_type):
    """The same weights with every expert routed to (top 4 of 4): layer 0's map is the same, the
    later layers' differ (what the router picks reaches the next layers' attention), and both
    equal transformers'."""
    top2 = attention_maps(run(tiny(model_type), IDS))
    d = tiny(model_type, num_experts_per_tok=4)
    everyone = attention_maps(run(d, IDS))
    np.testing.assert_allclose(everyone, reference(d, IDS)["attentions"], atol=1e-5)
    np.testing.assert_allclose(top2[0], everyone[0], atol=1e-6)
    assert np.abs(top2[1:] - everyone[1:]).max() > 1e-2


@pytest.mark.reference
def test_mixtral_slides_its_window_and_qwen3_moe_when_asked(tiny):
    n = len(IDS)
    i, j = np.indices((n, n))
    mixtral = attention_maps(run(tiny("mixtral"), IDS))
    assert (mixtral[:, :, (j > i) | (j <= i - 4)] == 0).all()
    assert (mixtral[:, :, (j <= i) & (j > i - 4)] > 0).all()
    d = tiny("qwen3_moe", use_sliding_window=True, sliding_window=4)
    sliding = attention_maps(run(d, IDS))
    np.testing.assert_allclose(sliding, reference(d, IDS)["attentions"], atol=1e-5)
    assert (sliding[:, :, j <= i - 4] == 0).all()
    full = attention_maps(run(tiny("qwen3_moe"), IDS))
    assert (full[:, :, j <= i] > 0).all()


@pytest.mark.reference
def test_olmoe_qk_norm_over_the_full_width_changes_the_maps(tiny):
    """q_norm spans all 4 × 16 query numbers of a token (k_norm 2 × 16): normalising each head
    alone (with the first head's scale) gives other maps from layer 0 on."""
    d = tiny("olmoe")
    cfg = json.loads((d / "config.json").read_text())
    w = SafetensorsWeights(d, "embed_tokens.weight")
    assert w.shape("layers.0.self_attn.q_norm.weight") == (64,)
    assert w.shape("layers.0.self_attn.k_norm.weight") == (32,)
    spec = OLMOE_SPECS["olmoe"]
    args = spec.args.parse(cfg)
    x = _decoder.embed(spec, w, IDS, args)
    per_head = ReplacedWeights(
        w,
        {
            f"layers.{i}.self_attn.{n}_norm.weight": w[f"layers.{i}.self_attn.{n}_norm.weight"][:16]
            for i in range(3)
            for n in "qk"
        },
    )
    variant = dataclasses.replace(spec, qk_norm_full=False)
    maps = np.stack([r.attention.weights for r in _decoder.layers(variant, per_head, x, args, "t")])
    assert np.abs(maps[0] - reference(d, IDS)["attentions"][0]).max() > 1e-2


@pytest.mark.reference
@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "olmoe"])
def test_experts_are_read_only_when_routed_to(tiny, model_type):
    d = tiny(model_type)
    cfg = json.loads((d / "config.json").read_text())
    fam = family(model_type)
    w = RecordingWeights(d, fam.anchor)
    ids = [5]  # one token, top 2 of 4 experts: two experts get no token
    x = fam.embed(w, ids, cfg)
    w.read.clear()
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        if "router" not in layer.attention:
            continue
        routed = set(np.flatnonzero(layer.attention["router"].any(axis=0)).tolist())
        experts = {
            int(n.split(".")[4])
            for n in w.read
            if n.startswith(f"layers.{i}.") and ".experts." in n
        }
        assert experts == routed and len(routed) == 2


def test_bad_config_values_are_refused_by_name():
    with pytest.raises(InputError, match="num_experts_per_tok 5 is more than num_local_experts 4"):
        MixtralArgs.parse({"num_local_experts": 4, "num_experts_per_tok": 5})
    with pytest.raises(InputError, match="num_experts_per_tok 9 is more than num_experts 8"):
        Qwen3MoeArgs.parse({"num_local_experts": 8, "num_experts_per_tok": 9})
    with pytest.raises(InputError, match="mlp_only_layers must be a list of layer numbers"):
        Qwen3MoeArgs.parse({"mlp_only_layers": [1.5]})
    with pytest.raises(InputError, match="clip_qkv is not supported"):
        OlmoeArgs.parse({"clip_qkv": 8.0})
    with pytest.raises(InputError, match="norm_topk_prob must be true or false"):
        OlmoeArgs.parse({"norm_topk_prob": "yes"})


def test_defaults_are_transformers_configs():
    mixtral = MixtralArgs.parse({})
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok, mixtral.rope_theta) == (
        8,
        2,
        1e6,
    )
    qwen = Qwen3MoeArgs.parse({})
    assert (qwen.experts, qwen.num_experts_per_tok, qwen.moe_intermediate_size) == (128, 8, 768)
    assert qwen.norm_topk_prob is False and qwen.decoder_sparse_step == 1
    olmoe = OlmoeArgs.parse({})
    assert (olmoe.experts, olmoe.num_experts_per_tok, olmoe.norm_topk_prob) == (64, 8, False)
    # hub checkpoints write num_experts, transformers 5 num_local_experts: the latter wins
    assert OlmoeArgs.parse({"num_experts": 16, "num_local_experts": 12}).experts == 12


# -- GGUF: llama.cpp's qwen3moe ----------------------------------------------------------------


def write_moe_gguf(path: Path, d: Path, experts_q8: bool = False) -> Path:
    """The bf16 checkpoint in `d` written as llama.cpp's converter writes a Qwen3-MoE
    (Qwen3MoeModel: architecture qwen3moe) or a Mixtral (LlamaModel: architecture llama, q/k rows
    permuted by LlamaModel.permute): names by gguf-py's TensorNameMap, each layer's experts
    stacked into one [experts, out, in] tensor per projection (ffn_gate_exps, ffn_up_exps,
    ffn_down_exps), expert metadata, every tensor F32 (`experts_q8`: the stacked experts Q8_0)."""
    gguf = require("gguf")
    from tests.test_gguf_writer import converter_permute

    cfg = json.loads((d / "config.json").read_text())
    mixtral = cfg["model_type"] == "mixtral"
    arch = "llama" if mixtral else "qwen3moe"
    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv, hidden = cfg["num_key_value_heads"], cfg["hidden_size"]
    experts = cfg.get("num_local_experts") or cfg["num_experts"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    w = SafetensorsWeights(d, "embed_tokens.weight")
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layer)
    out = gguf.GGUFWriter(str(path), arch)
    gguf_decoder_header(out, cfg, n_kv)
    out.add_key_length(head_dim)
    out.add_value_length(head_dim)
    out.add_expert_count(experts)
    out.add_expert_used_count(cfg["num_experts_per_tok"])
    if not mixtral:
        out.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    out.add_file_type(0)
    # llama.cpp needs a merges list (the tests give ids)
    gguf_byte_tokenizer(out, cfg["vocab_size"], "qwen2", ["a b"])
    stacks: dict[str, list[np.ndarray]] = {}
    for name in w:
        full = name if name == "lm_head.weight" else "model." + name
        data = w[name]
        if ".experts." in name:  # model.layers.{i}.{mlp|block_sparse_moe}.experts.{e}.{proj}.weight
            parts = full.split(".")
            merged = ".".join(parts[:5] + parts[6:])  # ….experts.{proj}.weight
            stacks.setdefault(merged, [data] * experts)[int(parts[5])] = data
            continue
        if mixtral and name.endswith("q_proj.weight"):
            data = converter_permute(data, n_head, n_head)
        if mixtral and name.endswith("k_proj.weight"):
            data = converter_permute(data, n_head, n_kv)
        new = tmap.get_name(full, try_suffixes=(".weight", ".bias"))
        assert new is not None, full
        out.add_tensor(new, np.ascontiguousarray(data, dtype=np.float32))
    for merged, datas in stacks.items():
        new = tmap.get_name(merged, try_suffixes=(".weight",))
        assert new is not None and "_exps" in new, merged
        stacked = np.ascontiguousarray(np.stack(datas), dtype=np.float32)
        if experts_q8:
            q8 = gguf.GGMLQuantizationType.Q8_0
            out.add_tensor(new, gguf.quants.quantize(stacked, q8), raw_dtype=q8)
        else:
            out.add_tensor(new, stacked)
    return gguf_finish(out, path)


# llama.cpp's qwen3moe has no dense layers, and its Mixtral no sliding window
GGUF_MODELS = [("qwen3_moe", {"mlp_only_layers": []}), ("mixtral", {"sliding_window": None})]


@pytest.mark.reference
@pytest.mark.parametrize(("model_type", "overrides"), GGUF_MODELS)
def test_moe_gguf_gives_the_original_maps(tiny, tmp_path, model_type, overrides):
    from attn_cli.gguf import open_gguf
    from attn_cli.gguf.locate import describe as listed

    d = tiny(model_type, **overrides)
    path = write_moe_gguf(tmp_path / "moe.gguf", d)
    assert listed(path, "moe", "path").family == model_type  # as `attn-cli models` shows it
    ckpt = open_gguf(path)
    cfg = ckpt.config
    assert cfg["model_type"] == model_type and cfg["num_experts_per_tok"] == 2
    if model_type == "qwen3_moe":
        assert cfg["num_experts"] == 4 and cfg["moe_intermediate_size"] == 32
        assert cfg["norm_topk_prob"] is True
        expert = "model.layers.0.mlp.experts.3.down_proj.weight"
        assert ckpt.weights.shape(expert) == (64, 32)
    else:  # llama.cpp's "llama" with experts
        assert cfg["gguf"]["architecture"] == "llama" and cfg["num_local_experts"] == 4
        expert = "model.layers.0.block_sparse_moe.experts.3.w2.weight"
        assert ckpt.weights.shape(expert) == (64, 128)
    from_gguf, original = run_gguf(ckpt, IDS), run(d, IDS)
    np.testing.assert_allclose(attention_maps(from_gguf), attention_maps(original), atol=1e-6)
    for ours, theirs in zip(from_gguf["layers"], original["layers"], strict=True):
        np.testing.assert_array_equal(ours.attention["router"], theirs.attention["router"])


@pytest.mark.reference
def test_quantised_stacked_experts_are_dequantised_one_expert_at_a_time(tiny, tmp_path):
    """Q8_0 experts: each expert's matrix is its own rows of the stacked tensor, equal to
    gguf-py's dequantisation of the whole tensor, and only those rows are read."""
    gguf = require("gguf")
    from attn_cli.gguf import open_gguf
    from attn_cli.gguf.reader import read_tensor

    d = tiny("qwen3_moe", mlp_only_layers=[])
    path = write_moe_gguf(tmp_path / "q8.gguf", d, experts_q8=True)
    ckpt = open_gguf(path)
    assert ckpt.weights.dtype("model.layers.1.mlp.experts.2.up_proj.weight") == "Q8_0"
    reader = gguf.GGUFReader(str(path))
    for proj, gname in (("gate_proj", "ffn_gate_exps"), ("down_proj", "ffn_down_exps")):
        t = next(t for t in reader.tensors if t.name == f"blk.1.{gname}.weight")
        whole = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(read_tensor(path, f"blk.1.{gname}.weight"), whole)
        for e in range(4):
            mine = ckpt.weights[f"model.layers.1.mlp.experts.{e}.{proj}.weight"]
            np.testing.assert_array_equal(mine, whole[e])
            rows = ckpt.weights.rows(f"model.layers.1.mlp.experts.{e}.{proj}.weight", [3, 1])
            np.testing.assert_array_equal(rows, whole[e][[3, 1]])
    maps = attention_maps(run_gguf(ckpt, IDS))
    # layer 0's attention comes before any expert (F32 weights): as the original's
    np.testing.assert_allclose(maps[0], attention_maps(run(d, IDS))[0], atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize(("model_type", "overrides"), GGUF_MODELS)
def test_llama_cpp_runs_the_same_file_to_the_same_logits(tiny, tmp_path, model_type, overrides):
    """llama.cpp itself on the file (float32 key/value cache): its logits equal attn-cli's, so
    the file is laid out as llama.cpp expects (stacked experts, router, q/k norms or permuted
    q/k rows) and llama.cpp routes the tokens as attn-cli does."""
    from tests.conftest import llama

    d = tiny(model_type, **overrides)
    path = write_moe_gguf(tmp_path / "moe.gguf", d)
    model = llama(
        model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1,
        type_k=0, type_v=0, flash_attn=False,
    )  # fmt: skip
    model.eval(IDS)
    theirs = np.array(model.scores[: len(IDS)])
    np.testing.assert_allclose(theirs, run(d, IDS)["logits"], atol=1e-4)


# -- torch-free: the committed fixtures (scripts/make_decoder_fixtures.py) --------------------


@pytest.mark.parametrize(
    "name, layers", [("tiny_mixtral", 2), ("tiny_qwen3_moe", 2), ("tiny_olmoe", 2)]
)
def test_fixture_matches_transformers(name, layers):
    from tokenizers import Tokenizer

    from tests.test_decoders_fixtures import SENTENCE

    d = FIXTURES / name
    expected = np.load(d / "expected.npz")
    ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(SENTENCE).ids
    assert ids == expected["ids"].tolist()
    ours = run(d, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape == (layers, 4, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"][-3:], expected["logits"], atol=1e-4)
    routing = ours["layers"][0].attention["router"]
    assert routing.shape == (len(ids), 4) and ((routing > 0).sum(-1) == 2).all()


def test_router_step_reads_in_a_trace():
    import attn_cli

    trace = attn_cli.load_model(FIXTURES / "tiny_qwen3_moe").trace("the cat sat")
    router = next(s for s in trace.steps if s.layer == 0 and s.name == "router")
    assert router.formula == "top-2(softmax(post_attention_layernorm(h)·W_routerᵀ))"
    assert "renormalised to sum to 1" in router.description
    arch = trace.config["architecture"]
    assert arch["mlp"].startswith("mixture of 4 SwiGLU experts (silu), softmax, top 2")
