"""Build the tiny encoder–decoder checkpoints in tests/fixtures/tiny_seq2seq/ and their expected
outputs.

    pip install ".[reference]"      # torch + transformers: this script only, never at run time
    python scripts/make_seq2seq_fixtures.py
    python scripts/make_seq2seq_fixtures.py --check   # rebuild in a temporary directory, compare

Writes tests/fixtures/tiny_seq2seq/<model>/:
  config.json, generation_config.json (greedy, no_repeat_ngram_size 2, max_length 12 so the
  random model writes varied tokens), tokenizer.json (word level: "w<i>" is id i after the
  family's special tokens, which its post-processor adds as the real tokenizers do),
  model.safetensors (float32, torch layout, as the hub stores it: T5's tied head not stored,
  FLAN-T5's own lm_head), and expected.npz from transformers (eager attention, float32):
      source_ids, target_ids   SOURCE and "<start> " + TARGET tokenised
      encoder, decoder, cross  output_attentions, (layers, heads, n_query, n_key)
      logits                   (n_target, vocab)
      generated                generate(do_sample=False, num_beams=1) on source_ids
for five models (d_model 16, 2 encoder and 3 decoder layers, 2 heads):
  t5        T5: relu feed-forward, tied head scaled by d_model^-0.5
  flan_t5   T5 v1.1 / FLAN-T5: gated GELU, its own unscaled lm_head
  bart      BART: post-LN, learned positions (offset 2), scaled embeddings, final_logits_bias
  mbart     mBART: pre-LN, a final LayerNorm per stack, forced_bos_token_id
  marian    Marian: post-LN, sinusoidal positions, the pad token as the decoder's start

Weights are drawn with a fixed torch seed, large enough that attention is far from uniform (the
script prints the mean largest weight per row).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tiny_seq2seq"
SEED = 23
VOCAB = 64
SOURCE = "w10 w11 w12 w13 w14 w15 w16 w17 w18"
TARGET = "w20 w21 w22 w23 w24"

T5 = {
    "vocab_size": VOCAB,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 24,
    "num_layers": 2,
    "num_decoder_layers": 3,
    "num_heads": 2,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 20,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
BART = {
    "vocab_size": VOCAB,
    "d_model": 16,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 24,
    "decoder_ffn_dim": 24,
    "max_position_embeddings": 32,
    "scale_embedding": True,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "forced_eos_token_id": 2,
}
GENERATION = {"no_repeat_ngram_size": 2, "max_length": 12}

# name -> (config.json, generation_config.json beyond the token ids, special tokens, bos added)
MODELS: dict[str, tuple[dict[str, Any], dict[str, Any], list[str], bool]] = {
    "t5": (
        {"model_type": "t5", **T5, "feed_forward_proj": "relu", "tie_word_embeddings": True},
        GENERATION,
        ["<pad>", "</s>", "<unk>"],
        False,
    ),
    "flan_t5": (
        {
            "model_type": "t5",
            **T5,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
        },
        GENERATION,
        ["<pad>", "</s>", "<unk>"],
        False,
    ),
    "bart": ({"model_type": "bart", **BART}, GENERATION, ["<s>", "<pad>", "</s>", "<unk>"], True),
    "mbart": (
        {"model_type": "mbart", **BART},
        GENERATION | {"forced_bos_token_id": 5},
        ["<s>", "<pad>", "</s>", "<unk>", "en_XX", "de_DE"],
        True,
    ),
    "marian": (
        {
            "model_type": "marian",
            **BART,
            "decoder_start_token_id": 1,
            "forced_eos_token_id": None,
            "activation_function": "swish",
        },
        GENERATION | {"bad_words_ids": [[1]]},
        ["<s>", "<pad>", "</s>", "<unk>"],
        False,
    ),
}
TOKEN_KEYS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
GENERATION_KEYS = ("forced_eos_token_id",)


def write_tokenizer(path: Path, specials: list[str], bos: bool) -> None:
    """A word-level tokenizer.json: the specials first, then w<i> for every other id; the
    post-processor adds <s> (BART, mBART) and </s> as the families' own tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(specials)}
    vocab |= {f"w{i}": i for i in range(len(specials), VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    single = "<s> $A </s>" if bos else "$A </s>"
    special = [("</s>", vocab["</s>"])] + ([("<s>", vocab["<s>"])] if bos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
    tok.save(str(path))


def build(name: str, seed: int):
    import torch
    import transformers as tf

    config_dict = MODELS[name][0]
    config = tf.CONFIG_MAPPING[config_dict["model_type"]](
        **{k: v for k, v in config_dict.items() if k != "model_type"}
    )
    config._attn_implementation = "eager"
    model = tf.AutoModelForSeq2SeqLM.from_config(config).eval()
    # T5's scores are not divided by √d_k: smaller weights keep them (and float32's rounding
    # of them) in the range of the others'
    scale = 0.3 if config_dict["model_type"] == "t5" else 0.5
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            gain = "norm" in param_name and param_name.endswith("weight")
            p.copy_(1 + 0.1 * noise if gain else scale * noise)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(
                0.5 * torch.randn(model.final_logits_bias.shape, generator=g)
            )
    return model


def stored(name: str, model: Any, seed: int) -> dict[str, np.ndarray]:
    """The tensors as the hub stores them: one copy of each tied table (the shared embeddings;
    the head tied to them is left out), Marian without its computed sinusoid tables, FLAN-T5
    with its own head."""
    import torch

    tied = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
    computed = ("encoder.embed_positions.weight", "decoder.embed_positions.weight")
    drop = tied + (computed if name == "marian" else ())
    state = {
        k: v.detach().numpy().copy()
        for k, v in model.state_dict().items()
        if k.removeprefix("model.") not in drop
    }
    if name == "flan_t5":
        g = torch.Generator().manual_seed(seed + 1)
        head = 0.3 * torch.randn(state["shared.weight"].shape, generator=g)
        state["lm_head.weight"] = head.numpy()
    return state


def write(name: str, root: Path = FIXTURES) -> None:
    import torch
    import transformers as tf
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    config, generation, specials, bos = MODELS[name]
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seed = SEED + len(name)
    model = build(name, seed)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in TOKEN_KEYS + GENERATION_KEYS if k in config} | generation
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_tokenizer(out / "tokenizer.json", specials, bos)
    save_file(stored(name, model, seed), str(out / "model.safetensors"), metadata={"format": "pt"})

    reference = tf.AutoModelForSeq2SeqLM.from_pretrained(out, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    source = tok.encode(SOURCE).ids
    target = [config["decoder_start_token_id"], *tok.encode(TARGET).ids]
    with torch.no_grad():
        r = reference(
            input_ids=torch.tensor([source]),
            decoder_input_ids=torch.tensor([target]),
            output_attentions=True,
        )
        generated = reference.generate(
            input_ids=torch.tensor([source]), do_sample=False, num_beams=1, use_cache=False
        )[0]

    def stack(maps: Any) -> np.ndarray:
        return torch.stack(maps)[:, 0].numpy().astype(np.float32)

    expected = {
        "source_ids": np.array(source, dtype=np.int64),
        "target_ids": np.array(target, dtype=np.int64),
        "encoder": stack(r.encoder_attentions),
        "decoder": stack(r.decoder_attentions),
        "cross": stack(r.cross_attentions),
        "logits": r.logits[0].numpy().astype(np.float32),
        "generated": generated.numpy().astype(np.int64),
    }
    np.savez_compressed(out / "expected.npz", **expected)
    print(
        f"tiny_seq2seq/{name}: cross attention: mean largest weight per row "
        f"{expected['cross'].max(-1).mean():.2f} (uniform would be {1 / len(source):.2f}); "
        f"generated {expected['generated'].tolist()}"
    )


def check() -> int:
    """Rebuild the fixtures and compare them with the committed ones (scripts/fixture_check.py)."""
    from fixture_check import check as compare

    return compare(
        lambda tmp: [write(name, tmp) for name in MODELS], FIXTURES, "make_seq2seq_fixtures"
    )


def main() -> None:
    import sys

    if sys.argv[1:] == ["--check"]:
        raise SystemExit(check())
    if sys.argv[1:]:
        raise SystemExit("usage: python scripts/make_seq2seq_fixtures.py [--check]")
    for name in MODELS:
        write(name)


if __name__ == "__main__":
    main()
