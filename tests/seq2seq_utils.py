"""Tiny random encoder–decoder models built with transformers, and their reference outputs.

`build(model_type, directory, **config)` saves a seeded random model (safetensors), a
word-level tokenizer.json over its vocabulary ("w0 w1 …" are ids) and its
generation_config.json; `reference` runs transformers (eager attention) teacher-forced and
`reference_generate` greedily. attn_cli's side runs through the registry (`ours`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.models.registry import family_for
from attn_cli.models.weights import SafetensorsWeights
from attn_cli.seq2seq import decode, encode

VOCAB = 96
SPECIALS = {"t5": ["<pad>", "</s>", "<unk>"], "bart": ["<s>", "<pad>", "</s>", "<unk>"]}

COMMON_T5 = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
COMMON_BART = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=2,
    init_std=0.25,  # far from uniform maps (transformers' 0.02 makes every row nearly flat)
)
# Every tiny model, with its features switched on.
TINY: dict[str, dict[str, Any]] = {
    "t5": dict(COMMON_T5, feed_forward_proj="relu", tie_word_embeddings=True),
    "flan-t5": dict(COMMON_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "mt5": dict(COMMON_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "bart": dict(COMMON_BART, scale_embedding=True),
    "mbart": dict(COMMON_BART, scale_embedding=True, forced_bos_token_id=5),
    "marian": dict(
        COMMON_BART,
        scale_embedding=True,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
    ),
}
MODEL_TYPE = {"flan-t5": "t5", "mt5": "t5"}


# transformers' model and config class of each tiny model
CLASSES = {
    "t5": ("T5ForConditionalGeneration", "T5Config"),
    "flan-t5": ("T5ForConditionalGeneration", "T5Config"),
    "mt5": ("MT5ForConditionalGeneration", "MT5Config"),
    "bart": ("BartForConditionalGeneration", "BartConfig"),
    "mbart": ("MBartForConditionalGeneration", "MBartConfig"),
    "marian": ("MarianMTModel", "MarianConfig"),
}


def write_tokenizer(directory: Path, specials: list[str], eos: str, bos: str | None) -> None:
    """A word-level tokenizer.json: the specials first, then w<i> for every other id; the
    post-processor adds bos/eos as the family's own tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(len(specials), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    single = f"{bos} $A {eos}" if bos else f"$A {eos}"
    special = [(eos, vocab[eos])] + ([(bos, vocab[bos])] if bos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
    tok.save(str(directory / "tokenizer.json"))


def build(name: str, directory: Path, seed: int = 0, **overrides: Any) -> Path:
    import torch
    import transformers

    torch.manual_seed(seed)
    model_class, config_class = (getattr(transformers, c) for c in CLASSES[name])
    cfg = config_class(**(TINY[name] | overrides))
    model = model_class(cfg).eval()
    with torch.no_grad():  # visible position biases and logits biases
        for n, p in model.named_parameters():
            if "relative_attention_bias" in n:
                p.normal_(0.0, 1.0)
        for n, p in model.named_parameters():  # the pad token is not always the best next one
            if n in ("shared.weight", "lm_head.weight", "model.shared.weight"):
                p[cfg.pad_token_id] *= 0.1
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_(0.0, 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    if name in ("flan-t5", "mt5"):
        hub_style_untied_head(directory, seed)
    t5 = MODEL_TYPE.get(name, name) == "t5"
    specials = SPECIALS["t5" if t5 else "bart"]
    write_tokenizer(directory, specials, "</s>", None if t5 or name == "marian" else "<s>")
    return directory


def hub_style_untied_head(directory: Path, seed: int) -> None:
    """As FLAN-T5 and T5 v1.1 are on the hub: their own lm_head.weight in the safetensors and
    tie_word_embeddings: false in config.json (transformers 5 saves a tied head and
    scale_decoder_outputs: false instead)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    g = torch.Generator().manual_seed(seed + 1)
    tensors["lm_head.weight"] = torch.randn(tensors["shared.weight"].shape, generator=g)
    save_file(tensors, path, metadata={"format": "pt"})
    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = False
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))


def reference(directory: Path, src: list[int], tgt: list[int]) -> dict[str, np.ndarray]:
    """transformers' maps (layers, heads, n_q, n_k) per block and logits, teacher-forced on
    decoder inputs `tgt`."""
    import torch
    import transformers

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([src]),
            decoder_input_ids=torch.tensor([tgt]),
            output_attentions=True,
        )

    def stack(maps) -> np.ndarray:
        return np.stack([m[0].float().numpy() for m in maps])

    return {
        "encoder": stack(out.encoder_attentions),
        "decoder": stack(out.decoder_attentions),
        "cross": stack(out.cross_attentions),
        "logits": out.logits[0].float().numpy(),
    }


def reference_generate(directory: Path, src: list[int], **kwargs: Any) -> list[int]:
    import torch
    import transformers

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # A config without max_length takes transformers' model-agnostic default of 20, which
        # attn-cli mirrors: that default is part of what is compared, not a mistake to warn of.
        warnings.filterwarnings("ignore", message="Using the model-agnostic default")
        out = model.generate(
            input_ids=torch.tensor([src]), do_sample=False, num_beams=1, use_cache=False, **kwargs
        )
    return [int(i) for i in out[0]]


def ours(directory: Path, src: list[int], tgt: list[int], family: Any = None) -> dict[str, Any]:
    """attn_cli's maps per block and logits, through the family's hook (`family`: another
    Family than the registry's, for a feature switched off)."""
    cfg = json.loads((directory / "config.json").read_text())
    fam = family or family_for(cfg["model_type"])
    assert fam is not None and fam.seq2seq is not None
    w = SafetensorsWeights(directory, fam.anchor, fam.rename)
    fam.check(w, cfg)
    enc, enc_layers = encode(fam, w, src, cfg)
    out, dec_layers = decode(fam.seq2seq, w, tgt, enc, cfg)
    return {
        "encoder": np.stack([layer.blocks[0].weights for layer in enc_layers]),
        "decoder": np.stack([layer.blocks[0].weights for layer in dec_layers]),
        "cross": np.stack([layer.blocks[1].weights for layer in dec_layers]),
        "logits": fam.seq2seq.logits(w, out, cfg),
        "enc_layers": enc_layers,
        "dec_layers": dec_layers,
    }
