"""Make the torch-free golden fixtures of the modern decoders, once, with transformers.

  tests/fixtures/tiny_llama/    a random Llama (hidden 32, 2 layers, 4 query heads on 2 key/value
                                heads, llama3 rope scaling), a byte-level BPE tokenizer
  tests/fixtures/tiny_gemma3/   a random Gemma 3 text model (q/k norms, 1 + w norms, √d embedding
                                scale, a sliding-window layer then a global one with their own
                                rotary bases, final-logit soft-capping), sharded, with a
                                SentencePiece-style tokenizer (▁ spaces, <0xNN> byte fallback)
  tests/fixtures/tiny_phi3/     a random Phi-3 (fused qkv_proj and gate_up_proj, half the head
                                rotated, LongRoPE past a 4-token original length, a sliding
                                window of 5), byte-level BPE tokenizer
  tests/fixtures/tiny_qwen2/    a random Qwen2 (q/k/v biases, YaRN rope scaling past an 8-token
                                original length), byte-level BPE tokenizer
  tests/fixtures/tiny_olmo2/    a random OLMo 2 (norms after attention and the MLP, none before;
                                q/k RMSNorm over all heads at once), byte-level BPE tokenizer
  tests/fixtures/tiny_smollm3/  a random SmolLM3 with 4 layers, the last without rotary
                                embeddings (NoPE), byte-level BPE tokenizer
  tests/fixtures/tiny_gpt_oss/  a random gpt-oss (a sink logit per head around 1, a 4-token
                                sliding-window layer then a full one, YaRN, 4 experts top 2),
                                byte-level BPE tokenizer
  tests/fixtures/tiny_mixtral/  a random Mixtral (4 experts top 2 in every layer, a sliding
  tests/fixtures/tiny_qwen3_moe/  window of 5; Qwen3-MoE with q/k norms, renormalised top 2 of 4,
  tests/fixtures/tiny_olmoe/    a dense MLP on layer 1; OLMoE with full-width q/k norms, top 2 of
                                4 not renormalised), byte-level BPE tokenizers
  tests/fixtures/tiny_llama4/   a random Llama 4 text model (4 layers: 0-2 rotary with 4-token
                                chunked attention and the L2 q/k norm, 3 NoPE with temperature
                                tuning; experts top 2 of 4 and a shared one on layers 1 and 3)
  tests/fixtures/tiny_qwen3_next/ a random Qwen3-Next (three Gated DeltaNet linear-attention
                                layers of 8 value heads then a gated softmax layer of 4 heads
                                with partial rotary, (1 + w) norms, 4 experts top 2 with a
                                shared expert, layer 1 dense),
                                byte-level BPE tokenizer; its maps are the softmax layer's
  tests/fixtures/tiny_deepseek_v2/  a random DeepSeek-V2 (latent attention with full-rank
                                queries, YaRN with mscale, a dense first layer, then 8 experts
                                in 4 groups, softmax group-limited top 2, a shared expert)
  tests/fixtures/tiny_deepseek_v3/  a random DeepSeek-V3 (low-rank queries, interleaved rotary,
                                YaRN mscale² on the softmax scale, a dense first layer, then
                                sigmoid routing with a bias correction of σ 1), byte-level BPE

Each holds bfloat16 safetensors (as transformers saves them), config.json, tokenizer.json and
expected.npz: the token ids of SENTENCE, transformers' attention maps (layers, heads, n, n) and
logits of the last three positions (3, vocab) from the eager float32 pass on those files. The tests compare attn-cli's
numpy forward pass against them without torch.

Run:  python scripts/make_decoder_fixtures.py           (needs torch and transformers)
      python scripts/make_decoder_fixtures.py tiny_olmo2 (only the fixtures named)
      python scripts/make_decoder_fixtures.py --check   (rebuild in a temporary directory and
                                                         compare with the committed files)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.decoder_utils import build_random_model, reference, zero_centred  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SENTENCE = "the cat sat\non the café mat"
CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "a cat and a dog on a mat",
    "the quick brown fox jumps over the lazy dog",
    "attention is all you need",
    "hi how are you",
] * 4

KNOWN = {
    "tiny_llama",
    "tiny_gemma3",
    "tiny_phi3",
    "tiny_qwen2",
    "tiny_olmo2",
    "tiny_smollm3",
    "tiny_gpt_oss",
    "tiny_mixtral",
    "tiny_qwen3_moe",
    "tiny_olmoe",
    "tiny_llama4",
    "tiny_qwen3_next",
    "tiny_deepseek_v2",
    "tiny_deepseek_v3",
}
LAST = 3  # logits kept for the last positions (the next-token prediction is the last one)
# Smaller than tests/decoder_utils.COMMON (which still gives the 4 query heads on 2 key/value
# heads); the vocabulary is the tokenizer's.
SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    head_dim=8,
    max_position_embeddings=128,
)


def byte_level_tokenizer(vocab_size: int):
    """GPT-2 / Llama 3 / SmolLM style: every byte is a symbol, spaces become Ġ."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def sentencepiece_tokenizer(vocab_size: int):
    """Llama 2 / Gemma style: spaces are ▁, characters outside the vocabulary fall back to
    byte tokens <0x00> … <0xFF> (ordinary vocabulary entries, as in those checkpoints), and
    <bos> starts every sequence."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(byte_tokens), show_progress=False
    )
    base.train_from_iterator(CORPUS, trainer)
    model = json.loads(base.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok


def make(
    name: str,
    model_type: str,
    tokenizer,
    shard: str | None = None,
    root: Path = FIXTURES,
    prepare: Callable[[Path], None] | None = None,
    **config,
) -> None:
    """One fixture; `prepare` rewrites the saved weights before the reference pass."""
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    build_random_model(
        model_type, d, seed=1234, shard=shard, overrides={**SMALL, "vocab_size": vocab, **config}
    )
    if prepare is not None:
        prepare(d)
    tokenizer.save(str(d / "tokenizer.json"))
    ids = tokenizer.encode(SENTENCE).ids
    ref = reference(d, ids)
    np.savez_compressed(
        d / "expected.npz",
        ids=np.asarray(ids, dtype=np.int64),
        attentions=ref["attentions"].astype(np.float32),
        logits=ref["logits"][-LAST:].astype(np.float32),
    )
    for f in d.glob("generation_config.json"):
        f.unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("transformers_version", None)  # the same fixture whatever version made it
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d}: {len(ids)} tokens, {size / 1024:.0f} KB")


def visible_sinks(directory: Path) -> None:
    """gpt-oss's sink logits drawn around 1 (the random init's are near 0 and take little mass)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(1234)
    for name in sorted(tensors):
        if name.endswith("self_attn.sinks"):
            t = tensors[name]
            tensors[name] = (torch.randn(t.shape, generator=gen) + 1.0).to(t.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


def strong_bias(directory: Path) -> None:
    """DeepSeek-V3's e_score_correction_bias drawn with σ 1, so it moves the experts' choice."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(1234)
    for name in sorted(tensors):
        if name.endswith("e_score_correction_bias"):
            t = tensors[name]
            tensors[name] = torch.randn(t.shape, generator=gen).to(t.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


# DeepSeek's latent attention and experts, as small as SMALL's geometry allows
DEEPSEEK = dict(
    num_key_value_heads=4,
    kv_lora_rank=12,
    qk_nope_head_dim=6,
    qk_rope_head_dim=4,
    head_dim=4,  # transformers' rotary width: qk_rope_head_dim
    v_head_dim=6,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    moe_intermediate_size=16,
    first_k_dense_replace=1,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    },
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)


def make_all(root: Path = FIXTURES, only: set[str] | None = None) -> None:
    """Every fixture under `root` (or only those named in `only`)."""

    def fixture(name: str, *args, **config) -> None:
        if only is None or name in only:
            make(name, *args, root=root, **config)

    fixture(
        "tiny_llama",
        "llama",
        byte_level_tokenizer(300),
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    fixture(
        "tiny_gemma3",
        "gemma3_text",
        sentencepiece_tokenizer(320),
        shard="20KB",
        query_pre_attn_scalar=8,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=5.0,
        attn_logit_softcapping=None,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        },
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    fixture(
        "tiny_phi3",
        "phi3",
        byte_level_tokenizer(300),
        partial_rotary_factor=0.5,
        sliding_window=5,
        original_max_position_embeddings=4,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0, 1.5],
            "long_factor": [1.0, 7.0],
        },
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fixture(
        "tiny_qwen2",
        "qwen2",
        byte_level_tokenizer(300),
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
        },
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    fixture(
        "tiny_olmo2",
        "olmo2",
        byte_level_tokenizer(300),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fixture(
        "tiny_smollm3",
        "smollm3",
        byte_level_tokenizer(300),
        num_hidden_layers=4,  # layer 3 is NoPE (no_rope_layer_interval 4)
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fixture(
        "tiny_gpt_oss",
        "gpt_oss",
        byte_level_tokenizer(300),
        prepare=visible_sinks,
        sliding_window=4,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 4.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 8,
        },
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fixture(
        "tiny_qwen3_next",
        "qwen3_next",
        byte_level_tokenizer(300),
        prepare=zero_centred,
        num_hidden_layers=4,  # linear, linear, linear, full (full_attention_interval 4)
        head_dim=16,  # 4 of 16 dimensions rotated (partial_rotary_factor 0.25)
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=4,
        linear_num_value_heads=8,  # twice the softmax layers' 4 heads, as in Qwen3-Next
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        mlp_only_layers=[1],
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fixture(
        "tiny_deepseek_v2",
        "deepseek_v2",
        byte_level_tokenizer(300),
        q_lora_rank=None,
        routed_scaling_factor=1.5,
        **{**DEEPSEEK, "topk_method": "group_limited_greedy", "topk_group": 1},
    )
    fixture(
        "tiny_deepseek_v3",
        "deepseek_v3",
        byte_level_tokenizer(300),
        prepare=strong_bias,
        q_lora_rank=16,
        **DEEPSEEK,
    )

    moe_fixtures(fixture)


def moe_fixtures(fixture: Callable[..., None]) -> None:
    """The mixture-of-experts decoders and Llama 4 (4 experts, top 2)."""
    ids = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    experts = dict(num_experts_per_tok=2, **ids)
    fixture(
        "tiny_mixtral", "mixtral", byte_level_tokenizer(300), num_local_experts=4,
        sliding_window=5, **experts,
    )  # fmt: skip
    fixture(
        "tiny_qwen3_moe", "qwen3_moe", byte_level_tokenizer(300), num_experts=4,
        moe_intermediate_size=16, mlp_only_layers=[1], norm_topk_prob=True, **experts,
    )  # fmt: skip
    fixture("tiny_olmoe", "olmoe", byte_level_tokenizer(300), num_experts=4, **experts)
    fixture(
        "tiny_llama4", "llama4_text", byte_level_tokenizer(300), num_hidden_layers=4,
        num_local_experts=4, intermediate_size_mlp=64, interleave_moe_layer_step=2,
        attention_chunk_size=4, floor_scale=2, attn_scale=0.5, **experts,
    )  # fmt: skip


def check() -> int:
    """Rebuild the fixtures and compare them with the committed ones (scripts/fixture_check.py)."""
    from fixture_check import check as compare

    return compare(make_all, FIXTURES, "make_decoder_fixtures")


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        raise SystemExit(check())
    names = set(sys.argv[1:])
    if names - KNOWN:
        raise SystemExit("usage: python scripts/make_decoder_fixtures.py [--check | NAME …]")
    make_all(only=names or None)


if __name__ == "__main__":
    main()
