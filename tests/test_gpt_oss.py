"""gpt-oss in numpy against transformers' GptOssForCausalLM (eager attention, float32): the
sink logit per head, alternating sliding-window and full layers, YaRN, the mixture of experts.

transformers builds a tiny random model (hidden 64, 3 layers sliding/full/sliding with a window
of 4 tokens, 4 query heads on 2 key/value heads, head_dim 16, 4 experts top 2), saves it in
bfloat16, and runs it in float32 from those files; attn-cli runs on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models.gpt_oss import GptOssArgs
from tests.conftest import ROOT, require
from tests.decoder_utils import attention_maps, build_random_model, family, reference, run

IDS = [5, 17, 250, 3, 99, 42, 42, 7, 180, 64, 12, 299, 1, 150]  # 14 tokens > the window (4)
TINY = dict(
    head_dim=16,
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=4,
    max_position_embeddings=32,  # = factor × original_max_position_embeddings
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 8,
    },
)
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_gpt_oss"


def set_sinks(directory: Path, value: float | None, seed: int = 0) -> None:
    """Rewrite every layer's sink logits: `value` for all heads, or None for random ones around
    1 (larger than the random init, so rows lose a visible share to the sink)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if name.endswith("self_attn.sinks"):
            new = (
                torch.full_like(t, value)
                if value is not None
                else torch.randn(t.shape, generator=gen) + 1.0
            )
            tensors[name] = new.to(t.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")
    d = tmp_path_factory.mktemp("gpt_oss")
    build_random_model("gpt_oss", d, overrides=TINY)
    set_sinks(d, None)
    return d


@pytest.mark.reference
def test_every_attention_map_and_the_logits_match_transformers(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    ref = reference(tiny, IDS)
    ours = run(tiny, IDS)
    maps = attention_maps(ours)
    assert maps.shape == ref["attentions"].shape == (3, 4, len(IDS), len(IDS))
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-4)
    n = len(IDS)
    i, j = np.indices((n, n))
    assert (maps[0][:, (j > i) | (j <= i - 4)] == 0).all()  # sliding: the token and 3 before
    assert (maps[1][:, j <= i] > 0).all()  # full: every earlier token
    for layer in ours["layers"]:
        record = layer.attention
        assert record.map_kind == "partial_weights"
        sink = record["sink"][..., 0]  # (heads, n)
        np.testing.assert_allclose(record.weights.sum(-1), 1.0 - sink, atol=1e-6)
        assert (sink > 0).all() and sink.mean() > 0.05  # the sink takes a visible share


@pytest.mark.reference
def test_sinks_switched_off_change_the_maps_and_rows_sum_to_one(tiny, tmp_path):
    import shutil

    off = tmp_path / "off"
    shutil.copytree(tiny, off)
    set_sinks(off, -1e4)  # exp(−10⁴) is 0 in float32: no mass to the sink
    with_sinks, without = attention_maps(run(tiny, IDS)), attention_maps(run(off, IDS))
    np.testing.assert_allclose(without, reference(off, IDS)["attentions"], atol=1e-5)
    np.testing.assert_allclose(without.sum(-1), 1.0, atol=1e-6)
    assert np.abs(with_sinks - without).max() > 0.05


@pytest.mark.reference
def test_router_weights_each_token_top_k_experts(tiny):
    import torch
    import transformers

    ours = run(tiny, IDS)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny), dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_router_logits=True)
    for layer, logits in zip(ours["layers"], out.router_logits, strict=True):
        routing = layer.attention["router"]
        top, chosen = torch.topk(logits, 2, dim=-1)
        expected = np.zeros_like(routing)
        np.put_along_axis(expected, chosen.numpy(), torch.softmax(top, -1).numpy(), axis=-1)
        np.testing.assert_allclose(routing, expected, atol=1e-5)
        assert ((routing > 0).sum(-1) == 2).all()


def test_fixture_matches_transformers_without_torch():
    """The committed fixture (scripts/make_decoder_fixtures.py): maps and logits as
    transformers computed them, rows summing to 1 − the sink mass."""
    expected = np.load(FIXTURE / "expected.npz")
    ids = expected["ids"].tolist()
    ours = run(FIXTURE, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"][-3:], expected["logits"], atol=1e-4)
    record = ours["layers"][0].attention
    np.testing.assert_allclose(record.weights.sum(-1), 1.0 - record["sink"][..., 0], atol=1e-6)
    assert (record["sink"] > 0).all() and record["sink"].mean() > 0.05


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 is more than num_local_experts 4"),
        ({"swiglu_limit": -1}, "swiglu_limit must be a positive finite number, got -1"),
        ({"num_local_experts": "4"}, "num_local_experts must be a positive integer, got '4'"),
    ],
)
def test_bad_config_values_are_refused_by_name(change, message):
    cfg = {"model_type": "gpt_oss", "num_local_experts": 4, **change}
    with pytest.raises(InputError, match=message):
        GptOssArgs.parse(cfg)


def test_defaults_are_transformers_gpt_oss_config():
    args = GptOssArgs.parse({})
    assert (args.hidden_size, args.num_attention_heads, args.kv_heads, args.head_size) == (
        2880,
        64,
        8,
        64,
    )
    assert (args.num_local_experts, args.num_experts_per_tok, args.sliding_window) == (128, 4, 128)
    assert (args.swiglu_alpha, args.swiglu_limit, args.attention_bias) == (1.702, 7.0, True)


def test_hub_style_rope_keys_give_the_same_maps():
    """gpt-oss-20b's config.json writes rope_theta and rope_scaling (transformers 4 style)."""
    cfg = json.loads((FIXTURE / "config.json").read_text())
    hub = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    rope = dict(cfg["rope_parameters"])
    hub["rope_theta"] = rope.pop("rope_theta")
    hub["rope_scaling"] = rope
    ids = np.load(FIXTURE / "expected.npz")["ids"].tolist()
    np.testing.assert_array_equal(
        attention_maps(run(FIXTURE, ids, hub)), attention_maps(run(FIXTURE, ids, cfg))
    )
    # and without any rope settings, GptOssConfig's YaRN (factor 32 over 4,096 tokens)
    plain = {k: v for k, v in hub.items() if k != "rope_scaling"}
    described = run(FIXTURE, ids, plain)["family"].describe(plain)["rope"]["full_attention"]
    assert (described["type"], described["factor"]) == ("yarn", 32.0)
    assert described["original_max_position_embeddings"] == 4096


def test_experts_are_read_one_at_a_time_and_only_when_routed_to():
    from attn_cli.models.weights import SafetensorsWeights

    fam = family("gpt_oss")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    read: list[tuple[str, tuple[int, ...]]] = []

    class Recording(SafetensorsWeights):
        def __getitem__(self, name: str) -> np.ndarray:
            assert not name.endswith(("gate_up_proj", "down_proj")), f"{name} read whole"
            return super().__getitem__(name)

        def rows(self, name: str, ids: list[int]) -> np.ndarray:
            read.append((name, tuple(ids)))
            return super().rows(name, ids)

        def entry_product(self, name: str, index: int, x: np.ndarray) -> np.ndarray:
            read.append((name, (index,)))
            return super().entry_product(name, index, x)

    w = Recording(FIXTURE, fam.anchor)
    ids = [5, 17, 3]  # three tokens, top 2 of 4 experts: some experts get no token
    x = fam.embed(w, ids, cfg)
    read.clear()
    for i, layer in enumerate(fam.layers(w, x, cfg)):
        routed = set(np.flatnonzero(layer.attention["router"].any(axis=0)).tolist())
        gate_up = {e for name, (e,) in read if name == f"layers.{i}.mlp.experts.gate_up_proj"}
        down = {e for name, (e,) in read if name == f"layers.{i}.mlp.experts.down_proj"}
        assert gate_up == down == routed
    assert any(len(set(e for n, (e,) in read if f"layers.{i}." in n)) < 4 for i in range(2))


# --- MXFP4 experts: llama.cpp's GGUF and the hub's safetensors --------------------------------


def hf_state(directory: Path) -> dict[str, np.ndarray]:
    """The saved model's tensors as float32 numpy arrays."""
    require("torch")
    from safetensors.torch import load_file

    return {
        k: v.float().numpy() for k, v in load_file(str(directory / "model.safetensors")).items()
    }


def mxfp4_experts(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's experts as ggml MXFP4 bytes, [E, out, in/32·17] (gguf-py's quantiser, i.e.
    ggml's reference one), keyed by the GGUF tensor they become: ffn_gate_exps, ffn_up_exps
    ([E, inter, d]: the even and odd columns of gate_up_proj, transposed) and ffn_down_exps
    ([E, d, inter]), as convert_hf_to_gguf's GptOssModel writes them."""
    gguf = require("gguf")
    out = {}
    for name, value in state.items():
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            continue
        i = int(name.split(".")[2])
        t = value.transpose(0, 2, 1)  # [E, out, in]
        parts = (
            {"gate": t[:, ::2], "up": t[:, 1::2]} if name.endswith("gate_up_proj") else {"down": t}
        )
        for part, data in parts.items():
            raw = gguf.quants.quantize(np.ascontiguousarray(data), gguf.GGMLQuantizationType.MXFP4)
            out[f"blk.{i}.ffn_{part}_exps.weight"] = raw
    return out


def dequantised_reference(tiny: Path, directory: Path, experts: dict[str, np.ndarray]) -> Path:
    """The tiny model with its experts replaced by their MXFP4 values (float32): what the
    GGUF and the hub's MXFP4 files hold, as transformers would run them."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from attn_cli.gguf.quants import mxfp4

    state = hf_state(tiny)
    for name in list(state):
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            i = int(name.split(".")[2])
            if name.endswith("gate_up_proj"):
                gate, up = (
                    mxfp4_values(mxfp4, experts[f"blk.{i}.ffn_{p}_exps.weight"])
                    for p in ("gate", "up")
                )
                both = np.empty((gate.shape[0], 2 * gate.shape[1], gate.shape[2]), np.float32)
                both[:, ::2], both[:, 1::2] = gate, up
                state[name] = both.transpose(0, 2, 1)
            else:
                state[name] = mxfp4_values(
                    mxfp4, experts[f"blk.{i}.ffn_down_exps.weight"]
                ).transpose(0, 2, 1)
    directory.mkdir()
    for f in ("config.json", "generation_config.json"):
        if (tiny / f).is_file():
            shutil.copy(tiny / f, directory / f)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    return directory


def mxfp4_values(mxfp4, raw: np.ndarray) -> np.ndarray:
    """ggml MXFP4 bytes [E, out, in/32·17] -> float32 [E, out, in]."""
    e, rows, width = raw.shape
    return mxfp4(raw.reshape(e * rows, width)).reshape(e, rows, -1)


def write_gpt_oss_gguf(path: Path, tiny: Path, experts: dict[str, np.ndarray]) -> Path:
    """The tiny model as llama.cpp's converter writes a gpt-oss GGUF: its names, experts split
    and MXFP4, biases split, sinks as attn_sinks.weight, YaRN as metadata, byte-level vocab."""
    gguf = require("gguf")
    from tests.test_gguf_writer import byte_vocab

    cfg = json.loads((tiny / "config.json").read_text())
    rope = cfg["rope_parameters"]
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_expert_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rope["factor"]))
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_expert_count(cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_file_type(38)  # MOSTLY_MXFP4_MOE
    toks, types = byte_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges([])
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "self_attn.sinks": "attn_sinks.weight",
        "mlp.router.weight": "ffn_gate_inp.weight",
        "mlp.router.bias": "ffn_gate_inp.bias",
        "mlp.experts.down_proj_bias": "ffn_down_exps.bias",
        **{f"self_attn.{x}_proj.{k}": f"attn_{y}.{k}" for x, y in
           (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output")) for k in ("weight", "bias")},
    }  # fmt: skip
    for name, value in hf_state(tiny).items():
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", value)
        elif name == "model.norm.weight":
            w.add_tensor("output_norm.weight", value)
        elif name == "lm_head.weight":
            w.add_tensor("output.weight", value)
        elif name.endswith("experts.gate_up_proj_bias"):
            i = int(name.split(".")[2])
            w.add_tensor(f"blk.{i}.ffn_gate_exps.bias", np.ascontiguousarray(value[:, ::2]))
            w.add_tensor(f"blk.{i}.ffn_up_exps.bias", np.ascontiguousarray(value[:, 1::2]))
        elif not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            i, rest = int(name.split(".")[2]), name.split(".", 3)[3]
            w.add_tensor(f"blk.{i}.{names[rest]}", value)
    for name, raw in experts.items():
        w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.MXFP4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_hub_mxfp4(directory: Path, tiny: Path, experts: dict[str, np.ndarray]) -> Path:
    """The tiny model as the hub stores gpt-oss: experts as *_blocks [E, out, in/32, 16]
    (two codes a byte, element 2j in the low nibble) and *_scales [E, out, in/32] (E8M0),
    gate and up rows interleaved; everything else bf16."""
    import shutil

    import torch
    from safetensors.torch import save_file

    def hub(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = raw.reshape(*raw.shape[:2], -1, 17)
        codes = np.concatenate([blocks[..., 1:] & 15, blocks[..., 1:] >> 4], axis=-1)  # ggml order
        return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8), blocks[..., 0].copy()

    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16)
             for k, v in hf_state(tiny).items()
             if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}  # fmt: skip
    n_layer = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    for i in range(n_layer):
        p = f"model.layers.{i}.mlp.experts."
        (gb, gs), (ub, us) = (hub(experts[f"blk.{i}.ffn_{x}_exps.weight"]) for x in ("gate", "up"))
        blocks = np.empty((gb.shape[0], 2 * gb.shape[1], *gb.shape[2:]), np.uint8)
        scales = np.empty((gs.shape[0], 2 * gs.shape[1], gs.shape[2]), np.uint8)
        blocks[:, ::2], blocks[:, 1::2], scales[:, ::2], scales[:, 1::2] = gb, ub, gs, us
        db, ds = hub(experts[f"blk.{i}.ffn_down_exps.weight"])
        for name, arr in (("gate_up_proj_blocks", blocks), ("gate_up_proj_scales", scales),
                          ("down_proj_blocks", db), ("down_proj_scales", ds)):  # fmt: skip
            state[p + name] = torch.from_numpy(np.ascontiguousarray(arr))
    directory.mkdir()
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": []}
    (directory / "config.json").write_text(json.dumps(cfg))
    if (tiny / "generation_config.json").is_file():
        shutil.copy(tiny / "generation_config.json", directory)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def mxfp4_files(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    experts = mxfp4_experts(hf_state(tiny))
    return {
        "reference": dequantised_reference(tiny, d / "reference", experts),
        "gguf": write_gpt_oss_gguf(d / "gpt-oss.gguf", tiny, experts),
        "hub": write_hub_mxfp4(d / "hub", tiny, experts),
    }


@pytest.mark.reference
def test_gguf_with_mxfp4_experts_gives_the_original_maps(mxfp4_files):
    """A gpt-oss GGUF laid out as llama.cpp's converter writes it (MXFP4 experts, gate and up
    apart): every map and the logits of transformers' model holding the same (dequantised)
    experts."""
    from attn_cli.gguf import open_gguf

    ref = reference(mxfp4_files["reference"], IDS)
    ckpt = open_gguf(mxfp4_files["gguf"])
    assert (
        ckpt.model_type == "gpt_oss"
        and ckpt.weights.dtype("model.layers.0.mlp.experts.gate_proj.weight") == "MXFP4"
    )
    cfg = ckpt.config
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["sliding_window"]) == (
        4,
        2,
        4,
    )
    assert cfg["rope_scaling"]["truncate"] is False
    fam = family("gpt_oss")
    w = ckpt.weights.with_names(lambda n: n.removeprefix("model."))
    fam.check(w, cfg)
    x = fam.embed(w, IDS, cfg)
    maps = []
    for layer in fam.layers(w, x, cfg):
        maps.append(layer.attention.weights)
        x = layer.out
    assert fam.logits is not None
    logits = fam.logits(w, fam.final(w, x, cfg), cfg)
    np.testing.assert_allclose(np.stack(maps), ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4)


@pytest.mark.reference
def test_hub_mxfp4_safetensors_give_the_original_maps(mxfp4_files, tiny):
    """The hub's MXFP4 experts (gate_up_proj_blocks/_scales), once refused, are read with the
    same dequantiser: transformers' maps for those experts; the bf16 experts of the original
    give other maps (so the check is not vacuous)."""
    ref = reference(mxfp4_files["reference"], IDS)
    ours = run(mxfp4_files["hub"], IDS)
    np.testing.assert_allclose(attention_maps(ours), ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-4)
    assert np.abs(run(tiny, IDS)["logits"] - ours["logits"]).max() > 1e-3
