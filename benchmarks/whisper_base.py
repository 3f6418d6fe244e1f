"""Benchmark row: a whisper-base-geometry model (random weights) on 30 s of audio, every
attention map (encoder, decoder, cross), attn-cli's numpy pass vs transformers eager.

    python benchmarks/whisper_base.py               # write the checkpoint once, then time both
    python benchmarks/whisper_base.py --runs 3      # alternate the two sides 3 times

The checkpoint (d_model 512, 6 encoder and 6 decoder layers × 8 heads, FFN 2048, 80 mel bins,
vocabulary 51,865: 72M parameters, float32 safetensors, a word-level tokenizer standing in for
Whisper's, generation_config.json with whisper-base's prompt) is written with numpy alone into
a cache directory (ATTN_CLI_BENCH_DIR, default /tmp/attn-cli-bench/whisper-base), with a 30-s
16-bit WAV of tones and noise. Both sides run in fresh processes on that WAV and the same
decoder tokens (the 4-token prompt and 28 target tokens):

  attn-cli      load_model(DIR).trace(WAV, target=…, steps="W"): the WAV read, the log-mel,
                every layer, every head's map kept (6 × 8 × 1500² encoder, 6 × 8 × 32 × 1500
                cross, 6 × 8 × 32² decoder)
  transformers  the WAV read (wave + numpy), WhisperFeatureExtractor, WhisperForConditional-
                Generation.from_pretrained(DIR, attn_implementation="eager"), one forward pass
                with output_attentions=True

`--threads N` sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS for both children.

Reported: whole-process wall time, CPU time (user + system) and peak RSS (ru_maxrss of each
child, from os.wait4), and the ratios (targets: ≥ 3× faster, ≤ 0.3× peak memory).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

from harness import code_versus_transformers

D, LAYERS, HEADS, FFN, VOCAB, MELS = 512, 6, 8, 2048, 51865, 80
PROMPT = [
    50258,
    50259,
    50359,
    50363,
]  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
TARGET = " ".join(f"w{i}" for i in range(100, 128))  # 28 tokens of the stand-in tokenizer
CONFIG = {
    "model_type": "whisper",
    "architectures": ["WhisperForConditionalGeneration"],
    "vocab_size": VOCAB,
    "num_mel_bins": MELS,
    "d_model": D,
    "encoder_layers": LAYERS,
    "decoder_layers": LAYERS,
    "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS,
    "encoder_ffn_dim": FFN,
    "decoder_ffn_dim": FFN,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "decoder_start_token_id": 50258,
    "eos_token_id": 50257,
    "pad_token_id": 50257,
    "bos_token_id": 50257,
    "tie_word_embeddings": True,
}
GENERATION = {
    "decoder_start_token_id": 50258,
    "eos_token_id": 50257,
    "forced_decoder_ids": [[1, 50259], [2, 50359], [3, 50363]],
    "no_timestamps_token_id": 50363,
    "max_length": 448,
}

OURS = """
import sys, attn_cli
d = sys.argv[1]
target = " ".join(f"w{i}" for i in range(100, 128))
t = attn_cli.load_model(d).trace(d + "/speech.wav", target=target, steps="W")
maps = {b: [s.shape for s in t.steps if s.name == "W" and s.block == b] for b in
        ("encoder", "decoder", "cross")}  # counted, not stacked: no copy of the maps
assert maps["encoder"] == [(1500, 1500)] * 48 and maps["cross"] == [(32, 1500)] * 48
assert maps["decoder"] == [(32, 32)] * 48
"""
THEIRS = """
import sys, wave, numpy as np, torch, transformers as tf
d = sys.argv[1]
with wave.open(d + "/speech.wav") as w:
    x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
features = tf.WhisperFeatureExtractor()(x, sampling_rate=16000, return_tensors="pt").input_features
ids = [50258, 50259, 50359, 50363] + [100 + 4 + i for i in range(28)]
model = tf.WhisperForConditionalGeneration.from_pretrained(d, attn_implementation="eager").eval()
with torch.no_grad():
    out = model(input_features=features, decoder_input_ids=torch.tensor([ids]),
                output_attentions=True)
assert [a.shape for a in out.encoder_attentions] == [(1, 8, 1500, 1500)] * 6
assert [a.shape for a in out.cross_attentions] == [(1, 8, 32, 1500)] * 6
assert [a.shape for a in out.decoder_attentions] == [(1, 8, 32, 32)] * 6
"""


def tokenizer_json() -> dict:
    """A word-level tokenizer: 'w{i}' is id i + 4 … (ids 0-3 are other words), Whisper's
    special tokens at their ids."""
    vocab = {f"w{i}": i + 4 for i in range(50000)}
    vocab.update({"<unk>": 0, "<a>": 1, "<b>": 2, "<c>": 3})
    for i in range(50004, VOCAB):
        vocab.setdefault(f"s{i}", i)
    specials = {
        50257: "<|endoftext|>",
        50258: "<|startoftranscript|>",
        50259: "<|en|>",
        50359: "<|transcribe|>",
        50363: "<|notimestamps|>",
    }
    for i, s in specials.items():
        vocab.pop(f"s{i}", None)
        vocab[s] = i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, s in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def write_checkpoint(d: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    if (d / "model.safetensors").is_file():
        return
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def r(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    half = D // 2
    inv = np.exp(-np.log(10000) / (half - 1) * np.arange(half))
    pos = np.arange(1500)[:, None] * inv[None, :]
    t = {
        "model.encoder.conv1.weight": r(D, MELS, 3, scale=0.1),
        "model.encoder.conv1.bias": r(D),
        "model.encoder.conv2.weight": r(D, D, 3, scale=0.05),
        "model.encoder.conv2.bias": r(D),
        "model.encoder.embed_positions.weight": np.concatenate(
            [np.sin(pos), np.cos(pos)], axis=1
        ).astype(np.float32),
        "model.encoder.layer_norm.weight": np.ones(D, np.float32),
        "model.encoder.layer_norm.bias": r(D),
        "model.decoder.embed_tokens.weight": r(VOCAB, D),
        "model.decoder.embed_positions.weight": r(448, D),
        "model.decoder.layer_norm.weight": np.ones(D, np.float32),
        "model.decoder.layer_norm.bias": r(D),
    }
    for stack, blocks in (("encoder", ("self_attn",)), ("decoder", ("self_attn", "encoder_attn"))):
        for i in range(LAYERS):
            p = f"model.{stack}.layers.{i}."
            for b in blocks:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    # queries and keys larger: attention far from uniform
                    scale = 0.2 if proj in ("q_proj", "k_proj") else 0.02
                    t[f"{p}{b}.{proj}.weight"] = r(D, D, scale=scale)
                    if proj != "k_proj":
                        t[f"{p}{b}.{proj}.bias"] = r(D)
                t[f"{p}{b}_layer_norm.weight"] = np.ones(D, np.float32)
                t[f"{p}{b}_layer_norm.bias"] = r(D)
            t[p + "fc1.weight"], t[p + "fc1.bias"] = r(FFN, D), r(FFN)
            t[p + "fc2.weight"], t[p + "fc2.bias"] = r(D, FFN), r(D)
            t[p + "final_layer_norm.weight"] = np.ones(D, np.float32)
            t[p + "final_layer_norm.bias"] = r(D)
    save_file(t, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "generation_config.json").write_text(json.dumps(GENERATION))
    (d / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": MELS})
    )
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    seconds = np.arange(30 * 16000) / 16000
    x = 0.2 * np.sin(2 * np.pi * 220 * seconds * (1 + 0.01 * seconds))
    x += 0.02 * rng.standard_normal(len(seconds))
    with wave.open(str(d / "speech.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
    code_versus_transformers("whisper-base", write_checkpoint, OURS, THEIRS)
