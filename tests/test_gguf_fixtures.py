"""Committed tiny GGUF fixtures, no torch and no llama.cpp needed: values as ggml's C code
dequantised them when scripts/make_gguf_fixtures.py made the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attn_cli.gguf import open_gguf, read_header
from attn_cli.gguf.reader import read_tensor

FIXTURES = Path(__file__).parent / "fixtures" / "gguf"


def test_tiny_llama_config():
    c = open_gguf(FIXTURES / "tiny-llama.gguf").config
    assert c["model_type"] == "llama"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (32, 64, 1)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 8)
    assert c["vocab_size"] == 48 and c["tie_word_embeddings"] is False
    assert c["rms_norm_eps"] == 1e-5 and c["rope_theta"] == 10000.0
    assert c["bos_token_id"] == 1 and c["eos_token_id"] == 2
    assert c["gguf"]["file_type"] == "Q8_0"
    assert c["gguf"]["tensor_types"] == {
        "Q8_0": 3, "F16": 1, "BF16": 1, "Q4_0": 1, "Q4_1": 1, "Q5_0": 1, "Q5_1": 1, "F32": 3,
    }  # fmt: skip


def test_tiny_llama_weights_equal_ggml():
    """Every tensor type of the fixture, HF names and HF row order (Q and K un-permuted)."""
    w = open_gguf(FIXTURES / "tiny-llama.gguf").weights
    exp = np.load(FIXTURES / "tiny-llama.expected.npz")
    names = {k.rsplit(":", 1)[0] for k in exp.files}
    assert set(w) == names
    for name in names:
        got = w[name]
        rows = exp[name + ":rows"]
        if got.ndim == 1:
            np.testing.assert_array_equal(got, rows[0], err_msg=name)
        else:
            np.testing.assert_array_equal(got[[0, 1, -1]], rows, err_msg=name)
            np.testing.assert_array_equal(w.rows(name, [0, 1, got.shape[0] - 1]), rows)
        assert float(got.astype(np.float64).sum()) == pytest.approx(
            float(exp[name + ":sum"]), abs=1e-9
        )


def test_k_quants_equal_ggml():
    exp = np.load(FIXTURES / "kquants.expected.npz")
    assert len(exp.files) == 5
    for name in exp.files:
        got = read_tensor(FIXTURES / "kquants.gguf", name)
        np.testing.assert_array_equal(got.view(np.uint32), exp[name].view(np.uint32), err_msg=name)


def test_header_of_fixture():
    h = read_header(FIXTURES / "tiny-llama.gguf")
    assert h.version == 3 and h.alignment == 32
    t = h.tensors["blk.0.attn_q.weight"]
    assert t.ne == (32, 32) and t.type_name == "F16" and t.nbytes == 32 * 32 * 2
    assert t.offset % 32 == 0 and t.offset + t.nbytes <= h.file_size


def test_without_the_gguf_package(monkeypatch):
    """F32/F16/BF16/Q8_0/Q4_0/Q4_1 need only numpy; other types without the gguf package are
    an InputError that says what to install."""
    import sys

    from attn_cli.errors import InputError

    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    w = open_gguf(FIXTURES / "tiny-llama.gguf").weights
    exp = np.load(FIXTURES / "tiny-llama.expected.npz")
    numpy_only = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"}
    checked = 0
    for name in w:
        if w.dtype(name) in numpy_only:
            np.testing.assert_array_equal(np.atleast_2d(w[name])[:1], exp[name + ":rows"][:1])
            checked += 1
    assert checked == 10
    with pytest.raises(InputError, match=r"Q5_0; dequantising it needs the gguf package: pip"):
        w["model.layers.0.mlp.gate_proj.weight"]
    with pytest.raises(InputError, match=r"needs the gguf package: pip install"):
        read_tensor(FIXTURES / "kquants.gguf", "w.Q4_K")


def test_open_model_by_path():
    from attn_cli.gguf import open_model

    ck = open_model(str(FIXTURES / "tiny-llama.gguf"))
    assert ck.name.endswith("tiny-llama.gguf") and ck.layers == 1 and ck.heads == 4
    assert ck.hidden == 32 and ck.model_type == "llama" and ck.max_positions == 128


def test_weights_renamed_dtype_and_count():
    w = open_gguf(FIXTURES / "tiny-llama.gguf").weights
    bare = w.with_names(lambda n: n.removeprefix("model."))
    assert "embed_tokens.weight" in bare and "layers.0.self_attn.q_proj.weight" in bare
    assert "lm_head.weight" in bare and "model.norm.weight" not in bare
    np.testing.assert_array_equal(bare["norm.weight"], w["model.norm.weight"])
    np.testing.assert_array_equal(
        bare.rows("embed_tokens.weight", [5]), w.rows("model.embed_tokens.weight", [5])
    )
    assert w.dtype("model.layers.0.self_attn.k_proj.weight") == "BF16"
    assert w.dtype("model.embed_tokens.weight") == "Q8_0"
    # 48x32 embedding and head, q/o 32x32, k/v 16x32, mlp 3 x 64x32, 3 norms of 32
    assert w.parameters() == 2 * 48 * 32 + 2 * 32 * 32 + 2 * 16 * 32 + 3 * 64 * 32 + 3 * 32
