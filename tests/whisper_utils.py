"""A tiny random Whisper for the tests and the torch-free fixture: built with transformers,
saved with its tokenizer, feature-extractor and generation configs, and run by transformers
(the reference) on a synthetic spoken-like signal."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "hello world, how are you?",
    "speech in, words out",
    "attention is all you need",
] * 4
# Whisper's special tokens, after the text vocabulary (every id ≥ <|endoftext|> is special).
SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|notimestamps|>",
]
TINY = dict(
    num_mel_bins=80,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_source_positions=1500,
    max_target_positions=40,
)


def tokenizer():
    """A byte-level BPE (as Whisper's) with Whisper's special tokens at the end."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def signal(seconds: float = 4.0, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Syllable-like bursts (voiced tones with harmonics) between pauses, then silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = np.zeros_like(t)
    bursts = ((0.3, 0.35, 140), (0.8, 0.25, 180), (1.3, 0.5, 120), (2.1, 0.4, 160))
    for start, length, pitch in bursts:
        on = (t >= start) & (t < start + length)
        env = np.sin(np.pi * (t[on] - start) / length) ** 2
        harmonics = [k for k in range(1, 12) if k * pitch < rate / 2]
        voiced = sum(np.sin(2 * np.pi * k * pitch * t[on]) / k for k in harmonics)
        x[on] += 0.2 * env * voiced
    return (x + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    """The reference's own reading (standard library, int16 / 32768), resampled to 16 kHz by
    scipy's resample_poly."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    if rate == RATE:
        return x
    from scipy.signal import resample_poly

    g = np.gcd(rate, RATE)
    return resample_poly(x.astype(np.float64), RATE // g, rate // g).astype(np.float32)


def build(
    directory: Path,
    seed: int = 0,
    generation: dict[str, Any] | None = None,
    chunk_seconds: int = 30,
    **overrides: Any,
) -> None:
    """A random WhisperForConditionalGeneration (weights drawn larger than transformers' init,
    so attention is far from uniform; the encoder's positions stay sinusoidal) in float32
    safetensors, with tokenizer.json, preprocessor_config.json and generation_config.json
    (the form of openai/whisper-*'s: forced_decoder_ids with the language left to detection,
    alignment_heads, suppressed tokens). `generation` overrides its entries (None: left out);
    `chunk_seconds` shortens the window (the encoder's positions follow: 50 per second)."""
    import torch
    import transformers

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    eos = ids["<|endoftext|>"]
    cfg = transformers.WhisperConfig(
        vocab_size=tok.get_vocab_size(),
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
        **{**TINY, "max_source_positions": 50 * chunk_seconds, **overrides},
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name and "encoder" in name:
                continue
            if name.endswith("layer_norm.weight"):
                p.copy_(torch.randn_like(p) * 0.2 + 1.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.25)
    gen = {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "eos_token_id": eos,
        "pad_token_id": eos,
        "bos_token_id": eos,
        "max_length": 12,
        "forced_decoder_ids": [[1, None], [2, ids["<|transcribe|>"]], [3, ids["<|notimestamps|>"]]],
        "is_multilingual": True,
        "lang_to_id": {"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        "task_to_id": {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "alignment_heads": [[0, 1], [1, 2], [1, 3]],
        "begin_suppress_tokens": [tok.token_to_id("Ġ") or 0, eos],
        "suppress_tokens": [5, 6],
        "median_filter_width": 7,
    }
    gen = {k: v for k, v in {**gen, **(generation or {})}.items() if v is not None}
    model.generation_config = transformers.GenerationConfig(**gen)
    model.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    transformers.WhisperFeatureExtractor(chunk_length=chunk_seconds).save_pretrained(d)
    for name in ("config.json", "generation_config.json", "preprocessor_config.json"):
        data = json.loads((d / name).read_text())
        data.pop("transformers_version", None)
        (d / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def reference(directory: Path, samples: np.ndarray, **generate: Any) -> dict[str, Any]:
    """transformers on the saved model: features (with the attention mask), greedy generate()
    with token timestamps (`generate`: its keywords), then one eager forward pass over the
    generated sequence with every attention map."""
    import torch
    import transformers

    d = Path(directory)
    fe = transformers.WhisperFeatureExtractor.from_pretrained(d)
    inputs = fe(samples, sampling_rate=RATE, return_tensors="pt", return_attention_mask=True)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(
        d, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model.generate(
            inputs.input_features,
            attention_mask=inputs.attention_mask,
            return_dict_in_generate=True,
            return_token_timestamps=True,
            **generate,
        )
        seq = out["sequences"]
        fwd = model(
            input_features=inputs.input_features, decoder_input_ids=seq, output_attentions=True
        )
    return {
        "features": inputs.input_features[0].numpy(),
        "mel_frames": int(inputs.attention_mask.sum()),
        "sequence": seq[0].tolist(),
        "token_timestamps": out["token_timestamps"][0].numpy(),
        "encoder": np.stack([a[0].numpy() for a in fwd.encoder_attentions]),
        "decoder": np.stack([a[0].numpy() for a in fwd.decoder_attentions]),
        "cross": np.stack([a[0].numpy() for a in fwd.cross_attentions]),
        "logits": fwd.logits[0].numpy(),
    }
