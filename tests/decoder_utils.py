"""Run a decoder family end to end without the CLI: embed -> layers -> final -> logits.

A small adapter for the decoder tests; the application's Model does the same through the
registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.models.registry import Family, family_for
from attn_cli.models.weights import SafetensorsWeights


def family(model_type: str) -> Family:
    f = family_for(model_type)
    assert f is not None, f"no family for {model_type!r}"
    return f


def run(directory: Path, ids: list[int], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every layer's attention steps and the final logits for token ids `ids`."""
    cfg = config or json.loads((Path(directory) / "config.json").read_text())
    fam = family(cfg["model_type"])
    return run_weights(fam, SafetensorsWeights(Path(directory), fam.anchor, fam.rename), ids, cfg)


def gguf_weights(ckpt: Any) -> Any:
    """An opened GGUF checkpoint's weights under the names the family reads (no "model.")."""
    return ckpt.weights.with_names(lambda n: n.removeprefix("model."))


def run_gguf(ckpt: Any, ids: list[int]) -> dict[str, Any]:
    """`run` on an opened GGUF checkpoint (attn_cli.gguf.open_gguf), with its own config."""
    cfg = ckpt.config
    return run_weights(family(cfg["model_type"]), gguf_weights(ckpt), ids, cfg)


def run_weights(fam: Family, w: Any, ids: list[int], cfg: dict[str, Any]) -> dict[str, Any]:
    """`run` on weights already opened."""
    fam.check(w, cfg)
    x = fam.embed(w, ids, cfg)
    layers = []
    for steps in fam.layers(w, x, cfg):
        layers.append(steps)
        x = steps.out
    h = fam.final(w, x, cfg)
    assert fam.logits is not None
    return {"family": fam, "layers": layers, "hidden": h, "logits": fam.logits(w, h, cfg)}


class ReplacedWeights:
    """A weight source with some tensors replaced (the same model with a feature switched off)."""

    def __init__(self, w: Any, replace: dict[str, np.ndarray]):
        self.w, self.replace = w, replace

    def __getitem__(self, name: str) -> np.ndarray:
        return self.replace[name] if name in self.replace else self.w[name]

    def __contains__(self, name: object) -> bool:
        return name in self.replace or name in self.w


class RecordingWeights(SafetensorsWeights):
    """A checkpoint's weights that note each tensor read whole (`read`) and each read of some
    rows or one entry of a stacked tensor (`read_rows`: name and the row or entry numbers)."""

    def __init__(self, path: Path, anchor: str) -> None:
        super().__init__(path, anchor)
        self.read: list[str] = []
        self.read_rows: list[tuple[str, tuple[int, ...]]] = []

    def __getitem__(self, name: str) -> np.ndarray:
        self.read.append(name)
        return super().__getitem__(name)

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        self.read_rows.append((name, tuple(ids)))
        return super().rows(name, ids)

    def entry_product(self, name: str, index: int, x: np.ndarray) -> np.ndarray:
        self.read_rows.append((name, (index,)))
        return super().entry_product(name, index, x)


def gguf_decoder_header(out: Any, cfg: dict[str, Any], kv_heads: int) -> None:
    """The llama-style metadata every test GGUF of a decoder starts with (gguf-py GGUFWriter
    `out`): context length, width, depth, MLP width, heads, rotary base and RMSNorm ε."""
    out.add_context_length(cfg["max_position_embeddings"])
    out.add_embedding_length(cfg["hidden_size"])
    out.add_block_count(cfg["num_hidden_layers"])
    out.add_feed_forward_length(cfg["intermediate_size"])
    out.add_head_count(cfg["num_attention_heads"])
    out.add_head_count_kv(kv_heads)
    out.add_rope_freq_base(float(cfg["rope_parameters"]["rope_theta"]))
    out.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))


def gguf_byte_tokenizer(out: Any, vocab_size: int, pre: str, merges: list[str]) -> list[str]:
    """A byte-level "gpt2" tokenizer of `vocab_size` tokens in the GGUF; returns its tokens."""
    from tests.test_gguf_writer import byte_vocab

    toks, types = byte_vocab(vocab_size)
    out.add_tokenizer_model("gpt2")
    out.add_tokenizer_pre(pre)
    out.add_token_list(toks)
    out.add_token_types(types)
    out.add_token_merges(merges)
    return toks


def gguf_finish(out: Any, path: Path) -> Path:
    """Write the GGUF's header, metadata and tensors and close it; returns its path."""
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    return path


def attention_maps(result: dict[str, Any]) -> np.ndarray:
    """(layers, heads, n, n)"""
    return np.stack([layer.attention.weights for layer in result["layers"]])


# Tiny random models of every family: hidden 64, 3 layers, 4 query heads sharing 2 key/value
# heads, sliding windows of 4 tokens where the family has them, every option switched on.
COMMON = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
TINY: dict[str, dict[str, Any]] = {
    "llama": dict(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=True,
    ),
    "mistral": dict(sliding_window=4, tie_word_embeddings=False),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(
        head_dim=24, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    ),
    "gemma": dict(head_dim=16),
    "gemma2": dict(
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=5.0,
    ),
    "gemma3_text": dict(
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        attn_logit_softcapping=5.0,
        final_logit_softcapping=5.0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        },
    ),
    "phi3": dict(partial_rotary_factor=0.5, sliding_window=4, pad_token_id=0),
}


def built_once(tmp_path_factory: Any, build: Callable[..., Any]) -> Callable[..., Path]:
    """A fixture's tiny checkpoints, each built once: get(name, **overrides) makes a directory
    and calls build(directory, name, **overrides) the first time it is asked for, and returns
    that directory every time."""
    built: dict[str, Path] = {}

    def get(name: str = "tiny", **overrides: Any) -> Path:
        key = name + json.dumps(overrides, sort_keys=True)
        if key not in built:
            d = tmp_path_factory.mktemp(name)
            build(d, name, **overrides)
            built[key] = d
        return built[key]

    return get


def build_random_model(
    model_type: str,
    directory: Path,
    seed: int = 0,
    shard: str | None = None,
    overrides: dict[str, Any] | None = None,
    **config: Any,
):
    """A random transformers model of `model_type` saved as bfloat16 safetensors in `directory`
    (sharded when `shard` is a max_shard_size). Weights are drawn larger than transformers'
    init so attention is far from uniform. Returns the config dict written."""
    import torch
    import transformers

    kwargs = {**COMMON, **TINY.get(model_type, {}), **(overrides or {}), **config}
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return save_randomized(model, directory, model_type.startswith("gemma"), shard)


def build_gemma3_multimodal(directory: Path, seed: int = 0) -> dict[str, Any]:
    """A random multimodal Gemma 3 (model_type gemma3: a tiny SigLIP vision tower and the
    language model of TINY["gemma3_text"]), saved as bfloat16 safetensors."""
    import torch
    import transformers

    text = {**COMMON, **TINY["gemma3_text"]}
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14,
    )  # fmt: skip
    cfg = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=299, boi_token_index=297, eoi_token_index=298,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(cfg)
    return save_randomized(model, directory, True, None)


def save_randomized(model, directory: Path, gemma: bool, shard: str | None) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                # q/k norms set every head vector's size: large, so the scores are not flat
                p.copy_(torch.randn_like(p) * 0.3 + (1.5 if gemma else 2.5))
            elif name.endswith("norm.weight"):
                # (1 + w) for Gemma, w otherwise: both around 1, not all equal
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if gemma else 1.0))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.25)
    model = model.to(torch.bfloat16)
    kw = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(directory, **kw)
    return json.loads((Path(directory) / "config.json").read_text())


def rewrite_weights(directory: Path, change: Callable[[str, Any], Any]) -> None:
    """Rewrite the saved model.safetensors in `directory`: each tensor (torch, taken in name
    order) becomes change(name, tensor), in its own dtype."""
    from safetensors.torch import load_file, save_file

    path = Path(directory) / "model.safetensors"
    tensors = load_file(str(path))
    changed = {k: change(k, tensors[k]).to(tensors[k].dtype) for k in sorted(tensors)}
    save_file(changed, str(path), metadata={"format": "pt"})


def agrees_with_transformers(
    directory: Path, ids: list[int], layers: int, heads: int = 4
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`run` and transformers' `reference` on the model in `directory`: (layers, heads, n, n)
    maps each, every map within 1e-5, the logits within 1e-4. Returns (ours, theirs)."""
    ref = reference(directory, ids)
    ours = run(directory, ids)
    maps = attention_maps(ours)
    assert maps.shape == ref["attentions"].shape == (layers, heads, len(ids), len(ids))
    np.testing.assert_allclose(maps, ref["attentions"], atol=1e-5)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=1e-4)
    return ours, ref


def reference(directory: Path, ids: list[int]) -> dict[str, Any]:
    """transformers' eager float32 forward pass on the saved directory."""
    import torch
    import transformers

    cls = transformers.AutoModelForCausalLM
    if json.loads((Path(directory) / "config.json").read_text())["model_type"] == "gemma3":
        cls = transformers.Gemma3ForConditionalGeneration
    model = cls.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    return {
        "attentions": np.stack([a[0].numpy() for a in out.attentions]),
        "logits": out.logits[0].numpy(),
        "hidden": out.hidden_states[-1][0].numpy(),
    }


def zero_centred(directory: Path, seed: int = 0) -> None:
    """Rewrite the saved weights as a Qwen3-Next checkpoint has them: the (1 + w) norms' w
    around 0 (tests.decoder_utils draws every norm around 1), q/k norms around 1 (scale ~2),
    and A_log around −2 so a token's memory decays by about a fifth per token (not to nothing)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def draw(name, t):
        for suffixes, mean, std in (
            (("layernorm.weight", "model.norm.weight"), 0.0, 0.2),
            (("q_norm.weight", "k_norm.weight"), 1.0, 0.3),
            (("A_log",), -2.0, 0.5),
        ):
            if name.endswith(suffixes):
                return torch.randn(t.shape, generator=gen) * std + mean
        return t

    rewrite_weights(directory, draw)
