"""End to end against llama.cpp on the real SmolLM2 file: tokenizer ids, config and weights
(Q/K row order included) through a minimal numpy Llama forward pass written here from the HF
modeling code, compared with llama.cpp's own logits. llama.cpp never un-permutes anything (its
rotary embedding expects the permuted rows), so agreement proves the un-permutation on real
data independently of transformers."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import llama, require
from tests.test_gguf_models import smollm2_file

pytestmark = pytest.mark.reference

TEXT = (
    "The bank of the river flooded after three days of rain, and the villagers moved "
    "their boats to higher ground. Le lendemain, tout était calme."
)


def rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def llama_logits(ckpt, ids: list[int]) -> np.ndarray:
    """LlamaForCausalLM (eager) in float64 numpy, straight from modeling_llama.py."""
    c, w = ckpt.config, ckpt.weights
    n, H, KV, d = len(ids), c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps = c["rms_norm_eps"]
    x = w.rows("model.embed_tokens.weight", ids).astype(np.float64)
    inv = 1.0 / (c["rope_theta"] ** (np.arange(0, d, 2) / d))
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(t):  # t: [heads, n, d]; rotate_half
        rot = np.concatenate([-t[..., d // 2 :], t[..., : d // 2]], -1)
        return t * cos + rot * sin

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, H, d).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, KV, d).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, KV, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(n, H * d)
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
    return np.concatenate([x @ b.T for _, b in w.row_blocks(head, 16384)], axis=1)


def test_smollm2_logits_equal_llama_cpp():
    from attn_cli.gguf import open_gguf

    path = smollm2_file()
    ckpt = open_gguf(path)
    ids = ckpt.tokenizer.encode(TEXT).ids
    llm = llama(str(path), logits_all=True, n_ctx=256, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=True) == ids
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
    ours = llama_logits(ckpt, ids)
    top1 = np.mean(ours.argmax(-1) == ref.argmax(-1))
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True)]
    # llama.cpp multiplies quantised activations with quantised weights; the bar
    assert top1 >= 0.9, top1
    assert min(corr) >= 0.995, min(corr)


def test_llama_cpp_loads_without_extra_buffer_types():
    """On CPUs with AMX llama.cpp repacks weights into extra buffer types and `eval` segfaults
    (exit 139, the whole run lost): every test and benchmark loads through tests/llama_cpp_safe.py,
    whose default model parameters turn them off."""
    require("llama_cpp")
    from tests.llama_cpp_safe import without_extra_buffers

    lib = without_extra_buffers().llama_cpp
    params = lib.llama_model_default_params()
    assert "use_extra_bufts" in [name for name, _ in type(params)._fields_]
    assert params.use_extra_bufts is False
    assert without_extra_buffers().llama_cpp.llama_model_default_params is (
        lib.llama_model_default_params
    )  # wrapped once, however often it is asked for
