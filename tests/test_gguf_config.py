"""Config details recovered from GGUF metadata and the converter's extra tensors: llama3
rope_freqs, linear / yarn rope scaling, phi3 longrope factors, gemma sliding-window layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_gguf_writer import TINY, llama_shapes, random_state, write_gguf


def converter_llama3_factors(base, dim, factor, low, high, old):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, verbatim (numpy)."""
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_freq_wavelen = old / low
    high_freq_wavelen = old / high
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(rope_factors, dtype=np.float32)


@pytest.mark.parametrize(
    "theta, dim, factor, old",
    [(500000.0, 64, 32.0, 8192), (500000.0, 128, 8.0, 8192), (500000.0, 64, 16.0, 4096)],
)
def test_llama3_rope_scaling_from_rope_freqs(tmp_path, theta, dim, factor, old):
    from attn_cli.gguf import open_gguf

    cfg = dict(
        TINY,
        hidden_size=4 * dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=theta,
        intermediate_size=64,
    )
    factors = converter_llama3_factors(theta, dim, factor, 1.0, 4.0, old)
    path = write_gguf(
        tmp_path / "l3.gguf", "llama", cfg, random_state(llama_shapes(cfg)),
        extra_tensors={"rope_freqs.weight": factors},
    )  # fmt: skip
    ck = open_gguf(path)
    assert ck.config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": old,
    }
    assert ck.config["gguf"]["rope_freqs"] == pytest.approx(factors.tolist())
    assert "rope_freqs.weight" not in set(ck.weights)


def test_unrecognised_rope_freqs_are_named(tmp_path):
    from attn_cli.gguf import open_gguf

    odd = np.linspace(1, 3, 4).astype(np.float32)
    path = write_gguf(
        tmp_path / "x.gguf", "llama", TINY, random_state(llama_shapes(TINY)),
        extra_tensors={"rope_freqs.weight": odd},
    )  # fmt: skip
    assert open_gguf(path).config["rope_scaling"] == {"rope_type": "gguf_rope_freqs"}


def test_linear_and_yarn(tmp_path):
    from attn_cli.gguf import open_gguf

    state = random_state(llama_shapes(TINY))
    kv = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    ck = open_gguf(write_gguf(tmp_path / "a.gguf", "llama", TINY, state, extra_kv=kv))
    assert ck.config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    kv = {
        "llama.rope.scaling.type": "yarn",
        "llama.rope.scaling.factor": 4.0,
        "llama.rope.scaling.original_context_length": 32768,
    }
    ck = open_gguf(write_gguf(tmp_path / "b.gguf", "llama", TINY, state, extra_kv=kv))
    assert ck.config["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
    }


def test_gemma3_sliding_pattern_and_27b_scale(tmp_path):
    """llama.cpp's rules: every 6th layer global (il % 6 == 5), query scale hidden/heads for
    the 62-layer model, head_dim otherwise; an explicit per-layer pattern wins."""
    from attn_cli.gguf.header import GGUFHeader, TensorInfo
    from attn_cli.gguf.to_hf import config_from_header

    def header(n_layer, extra):
        meta = {
            "general.architecture": "gemma3",
            "gemma3.block_count": n_layer,
            "gemma3.embedding_length": 5376,
            "gemma3.feed_forward_length": 64,
            "gemma3.attention.head_count": 32,
            "gemma3.attention.head_count_kv": 16,
            "gemma3.attention.key_length": 128,
            "gemma3.attention.value_length": 128,
            "gemma3.attention.sliding_window": 1024,
            **extra,
        }
        tensors = {"token_embd.weight": TensorInfo("token_embd.weight", (5376, 10), 0, 0, 0)}
        return GGUFHeader(tmp_path / "g.gguf", 3, 0, meta, tensors, 32, 0)

    cfgs = {
        n: config_from_header(header(n, extra))
        for n, extra in [
            (62, {}),
            (26, {}),
            (8, {"gemma3.attention.sliding_window_pattern": [True, False] * 4}),
        ]
    }
    assert cfgs[62]["query_pre_attn_scalar"] == 5376 // 32
    assert cfgs[26]["query_pre_attn_scalar"] == 128
    lt = cfgs[26]["layer_types"]
    assert [i for i, t in enumerate(lt) if t == "full_attention"] == [5, 11, 17, 23]
    assert cfgs[8]["layer_types"] == ["sliding_attention", "full_attention"] * 4
    assert cfgs[26]["rope_local_base_freq"] == 10000.0 and cfgs[26]["sliding_window"] == 1024


def phi3_shapes(cfg):
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    s = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.qkv_proj.weight": (h + 2 * h // 2, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_up_proj.weight": (2 * ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        }
    return s


def test_phi3_longrope_and_fused_tensors(tmp_path):
    from attn_cli.gguf import open_gguf

    cfg = dict(TINY)  # 4 heads of 8, 2 key/value heads: qkv has 32 + 2 * 16 rows
    long_f = np.linspace(1, 20, 4).astype(np.float32)
    short_f = np.linspace(1, 2, 4).astype(np.float32)
    state = random_state(phi3_shapes(cfg))
    path = write_gguf(
        tmp_path / "phi3.gguf", "phi3", cfg, state,
        extra_kv={"phi3.rope.scaling.original_context_length": 4096, "phi3.attention.sliding_window": 2047},
        extra_tensors={"rope_factors_long.weight": long_f, "rope_factors_short.weight": short_f},
    )  # fmt: skip
    ck = open_gguf(path)
    c = ck.config
    assert c["model_type"] == "phi3" and c["original_max_position_embeddings"] == 4096
    assert c["sliding_window"] == 2047
    assert c["rope_scaling"]["rope_type"] == "longrope"
    assert c["rope_scaling"]["long_factor"] == pytest.approx(long_f.tolist())
    assert c["rope_scaling"]["short_factor"] == pytest.approx(short_f.tolist())
    for name, ref in state.items():
        np.testing.assert_array_equal(ck.weights[name], ref, err_msg=name)
    assert not any("rope_factors" in k for k in ck.weights)
    # and the model runs with them (LongRoPE used to be refused)
    from attn_cli.models._decoder import describe

    rope = describe(c)["rope"]["sliding_attention"]
    assert rope["type"] == "longrope" and rope["original_max_position_embeddings"] == 4096


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_qkv_is_split(tmp_path, arch):
    """A file converted with --fuse-qkv (llama's Q and K permuted before fusing, qwen2's
    biases fused too) gives back the separate HF projections."""
    from attn_cli.gguf import open_gguf

    cfg = dict(TINY)
    shapes = llama_shapes(cfg)
    if arch == "qwen2":
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}.self_attn."
            shapes |= {p + "q_proj.bias": (32,), p + "k_proj.bias": (16,), p + "v_proj.bias": (16,)}
    state = random_state(shapes, seed=3)
    if arch == "llama":  # biases, permuted too
        state["model.layers.1.self_attn.q_proj.bias"] = np.arange(32, dtype=np.float32)
        state["model.layers.1.self_attn.k_proj.bias"] = np.arange(16, dtype=np.float32)
        state["model.layers.1.self_attn.v_proj.bias"] = np.arange(16, dtype=np.float32)
    path = write_gguf(tmp_path / "f.gguf", arch, cfg, state, fuse_qkv=True)
    ck = open_gguf(path)
    names = set(ck.header.tensors)
    assert "blk.0.attn_qkv.weight" in names and "blk.0.attn_q.weight" not in names
    assert set(ck.weights) == set(state)
    for name, ref in state.items():
        np.testing.assert_array_equal(ck.weights[name], ref, err_msg=name)
    q = "model.layers.0.self_attn.k_proj.weight"
    np.testing.assert_array_equal(ck.weights.rows(q, [0, 7, 15]), state[q][[0, 7, 15]])
