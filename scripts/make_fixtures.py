"""Build the tiny BERT and GPT-2 checkpoints in tests/fixtures/ and their expected outputs.

    pip install ".[reference]"      # torch + transformers: this script only, never at run time
    python scripts/make_fixtures.py

Run once; the outputs are committed (`python scripts/make_fixtures.py --check` rebuilds them in
a temporary directory and compares), so tests/test_fixtures.py checks the numpy forward pass of
every architecture against transformers on every developer run, without torch.

Writes, for tiny_bert/ and tiny_gpt2/:
  config.json        the transformers config (hidden 8, 2 layers, 2 heads, tiny vocabulary)
  model.safetensors  float32 weights, torch layout. BERT's names carry the 'bert.' prefix of
                     BertFor* checkpoints; GPT-2's have none, like the hub's gpt2.
  tokenizer.json     made with `tokenizers`: a WordPiece with [CLS]/[SEP]/[UNK] and BERT's
                     post-processor for BERT; a byte-level BPE (all 256 bytes) for GPT-2
  expected.npz       for each sample text k (see SAMPLES), from transformers in float32 with
                     eager attention:
                       text_k               the text (0-d str array)
                       tokens_k, ids_k      the tokenizer's tokens and ids (special tokens added)
                       attentions_k         output_attentions stacked: (layers, heads, n, n)
                       hidden_states_k      output_hidden_states stacked: (layers + 1, n, d);
                                            the last one is the model's output (GPT-2: after ln_f)
                       last_hidden_state_k  (n, d)
                       layer_inputs_k       (layers, n, d): what each layer's Q/K/V projections
                                            multiply (BERT: hidden_states[i]; GPT-2: ln_1 output)
and tiny_gpt2/fp16/: the same checkpoint stored in float16. Every weight is rounded to a
float16-representable value before anything is computed, so both copies hold the same numbers
and share expected.npz.

Weights are drawn with a fixed torch seed at scales that make the attention far from uniform
(the script prints the mean largest weight per row), so a wrong scale, mask or softmax shows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SEED = 1234

SAMPLES = {
    "bert": [
        "the cat sat on the mat",
        "the bank of the river",
        "Hi! How are the dogs walking, zebra?",  # WordPiece pieces (##s, ##ing) and an [UNK]
    ],
    "gpt2": [
        "the cat sat on the mat",
        "the bank of the river",
        "Hello, world! hi how are you?",
    ],
}

BERT_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "!", ",", ".", "?",
    "the", "cat", "sat", "on", "mat", "bank", "of", "river", "hi", "how", "are", "you",
    "dog", "walk", "run", "a", "is",
    "##s", "##ing", "##ed", "##ning",
]  # fmt: skip


def bert_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(BERT_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def gpt2_tokenizer() -> Tokenizer:
    """Byte-level BPE like GPT-2's: every byte has a token, a few merges learnt from a corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    corpus = SAMPLES["gpt2"] * 3 + ["the river bank", "how are you", "hello world"]
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 1 + 40,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def randomize(model: torch.nn.Module, attention_gain: float) -> None:
    """Overwrite every parameter with seeded values at scales chosen so that attention is
    peaked, then round them to float16-representable numbers."""
    g = torch.Generator().manual_seed(SEED)

    def normal(shape, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or ".ln_" in name or name.startswith("ln_"):
                value = (
                    (1.0 + normal(p.shape, 0.2))
                    if name.endswith("weight")
                    else normal(p.shape, 0.1)
                )
            elif p.ndim == 1:  # biases
                value = normal(p.shape, 0.2)
            elif "embeddings" in name or name in ("wte.weight", "wpe.weight"):
                value = normal(p.shape, 1.0)
            elif any(k in name for k in ("query", "key", "c_attn")):
                value = normal(p.shape, attention_gain)
            else:
                value = normal(p.shape, 1.0 / np.sqrt(min(p.shape)))
            p.copy_(value.half().float())


def build_bert(vocab_size: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=32,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    config._attn_implementation = "eager"
    model = BertModel(config, add_pooling_layer=False).eval()
    randomize(model, attention_gain=0.8)
    return config, model


def build_gpt2(vocab_size: int):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=8,
        n_layer=2,
        n_head=2,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "eager"
    model = GPT2Model(config).eval()
    randomize(model, attention_gain=0.8)
    return config, model


def run(model, kind: str, ids: list[int]) -> dict[str, np.ndarray]:
    """transformers' forward pass; GPT-2's ln_1 outputs caught with forward hooks."""
    ln1: list[torch.Tensor] = []
    hooks = []
    if kind == "gpt2":
        hooks = [blk.ln_1.register_forward_hook(lambda m, i, o: ln1.append(o)) for blk in model.h]
    with torch.no_grad():
        out = model(
            torch.tensor([ids]), output_attentions=True, output_hidden_states=True, use_cache=False
        )
    for h in hooks:
        h.remove()
    hidden = torch.stack(out.hidden_states)[:, 0]
    layers = len(out.attentions)
    result = {
        "attentions": torch.stack(out.attentions)[:, 0].numpy(),
        "hidden_states": hidden.numpy(),
        "last_hidden_state": out.last_hidden_state[0].numpy(),
        "layer_inputs": (torch.stack(ln1)[:, 0] if kind == "gpt2" else hidden[:layers]).numpy(),
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in result.items()}


def write(kind: str, root: Path = FIXTURES) -> None:
    tok = bert_tokenizer() if kind == "bert" else gpt2_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config, model = build_bert(vocab_size) if kind == "bert" else build_gpt2(vocab_size)
    out = root / f"tiny_{kind}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok.save(str(out / "tokenizer.json"))
    # A tokenizer that survives a round trip through the file is what attn-cli will load.
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))

    cfg = config.to_dict()
    cfg.pop("_attn_implementation_autoset", None)
    cfg.pop("transformers_version", None)  # keep regeneration byte-identical across versions
    cfg["model_type"] = kind
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    prefix = "bert." if kind == "bert" else ""
    tensors = {prefix + k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if kind == "gpt2":
        half = out / "fp16"
        half.mkdir()
        shutil.copy(out / "config.json", half / "config.json")
        shutil.copy(out / "tokenizer.json", half / "tokenizer.json")
        fp16 = {k: v.astype(np.float16) for k, v in tensors.items()}
        assert all(np.array_equal(fp16[k].astype(np.float32), v) for k, v in tensors.items())
        save_file(fp16, str(half / "model.safetensors"), metadata={"format": "pt"})

    expected: dict[str, np.ndarray] = {}
    for k, text in enumerate(SAMPLES[kind]):
        enc = tok.encode(text, add_special_tokens=True)
        expected[f"text_{k}"] = np.array(text)
        expected[f"tokens_{k}"] = np.array(enc.tokens)
        expected[f"ids_{k}"] = np.array(enc.ids, dtype=np.int64)
        for name, value in run(model, kind, enc.ids).items():
            expected[f"{name}_{k}"] = value
        a = expected[f"attentions_{k}"]
        print(
            f"tiny_{kind}: {text!r}: {len(enc.ids)} tokens {enc.tokens}; attention: mean largest "
            f"weight per row {a.max(-1).mean():.2f} (uniform would be {1 / len(enc.ids):.2f})"
        )
    arrays: dict[str, Any] = expected  # (numpy's stub types **kwds like allow_pickle)
    np.savez_compressed(out / "expected.npz", **arrays)
    sizes = ", ".join(
        f"{p.relative_to(out)} {p.stat().st_size} B" for p in sorted(out.rglob("*.*"))
    )
    print(f"wrote {out}: {sizes}")


def check() -> int:
    """Rebuild the fixtures and compare them with the committed ones (scripts/fixture_check.py)."""
    from fixture_check import check as compare

    return compare(
        lambda tmp: [write(kind, tmp) for kind in ("bert", "gpt2")], FIXTURES, "make_fixtures"
    )


def main() -> None:
    import sys

    if sys.argv[1:] == ["--check"]:
        raise SystemExit(check())
    if sys.argv[1:]:
        raise SystemExit("usage: python scripts/make_fixtures.py [--check]")
    for kind in ("bert", "gpt2"):
        write(kind)


if __name__ == "__main__":
    main()
