"""GGUF metadata and tensor names -> a HuggingFace config and HuggingFace tensor names.

What llama.cpp's converter (convert_hf_to_gguf.py, conversion/{llama,qwen,phi,gemma}.py)
changes on the way in, and what is undone here so values equal the HF model's:

- llama arch (Llama, SmolLM, Mistral): the rows of q_proj and k_proj (weights and biases) are
  permuted for ggml's rotary layout: ``LlamaModel.permute`` reshapes [n_head, 2, d/2, in] and
  swaps axes 1 and 2. The inverse is the same reshape with [n_head, d/2, 2, in]. For k_proj
  n_head is the number of key/value heads.
- gemma, gemma2, gemma3: every ``*norm.weight`` is stored as 1 + w (``data_torch + 1``); HF
  stores w and adds 1 in Gemma*RMSNorm, so 1 is subtracted here.
- gemma3: rows of the embedding beyond the tokenizer's vocabulary are dropped by the
  converter; the config's vocab_size is the number of rows the file has.
- llama3 rope scaling is written as a ``rope_freqs.weight`` tensor of per-frequency divisors,
  not as metadata: the HF ``rope_scaling`` is recovered from it (exact divisors are kept in
  config["gguf"]["rope_freqs"]).
- phi3 longrope: ``rope_factors_long/short.weight`` tensors -> rope_scaling long/short_factor.
- A converter run with --fuse-qkv writes ``attn_qkv`` (Q, K, V concatenated; Q and K already
  permuted for llama): split here. phi3 is the other way round (HF has fused qkv_proj and
  gate_up_proj); separate tensors are concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.gguf.header import GGUFHeader, show

# GGUF general.architecture -> HF model_type
ARCHS = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}
GEMMA = ("gemma", "gemma2", "gemma3")

# llama.cpp's LlamaFileType (general.file_type) names
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}


@dataclass(frozen=True)
class Recipe:
    """How one HF tensor is made from GGUF tensors: the sources' rows concatenated (phi3
    fusing), a row slice (splitting a fused attn_qkv), llama's rotary row order undone
    (``unpermute`` = number of heads), and a constant subtracted (gemma norms)."""

    sources: tuple[str, ...]
    rows: tuple[int, int] | None = None
    unpermute: int | None = None
    shift: float = 0.0


def unpermute_index(n_rows: int, n_head: int) -> np.ndarray:
    """For each HF row, the GGUF row it is stored in (inverse of LlamaModel.permute)."""
    if n_rows % (2 * n_head):
        raise InputError(f"cannot undo the rotary row order: {n_rows} rows for {n_head} heads")
    idx = np.arange(n_rows)
    return idx.reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


def _arch_get(meta: dict[str, Any], arch: str) -> Callable[..., Any]:
    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    return get


def _uniform(value: Any, what: str) -> int:
    """Per-layer arrays (some converters write head counts per layer) must be uniform here."""
    if isinstance(value, np.ndarray | list):
        vals = {int(v) for v in value}
        if len(vals) != 1:
            raise InputError(f"{what} differs between layers ({sorted(vals)}): not supported")
        return vals.pop()
    return int(value)


def _num(value: Any) -> float | int | None:
    """Metadata numbers as plain Python numbers; float32 values rounded to their shortest
    decimal (1e-5 stored as float32 reads 9.99999974e-06; HF configs say 1e-05)."""
    if value is None:
        return None
    if isinstance(value, float):
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return int(value)


def infer_llama3(factors: np.ndarray, theta: float, dim: int) -> dict[str, Any] | None:
    """The llama3 rope_scaling that produces these rope_freqs (convert_hf_to_gguf's formula)."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    if factors.shape != freqs.shape:
        return None
    factor = float(np.max(factors))
    # (old, low, high) and (2 old, 2 low, 2 high) give the same factors: the usual
    # low 1 / high 4 is tried first
    pairs = [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (2.0, 8.0), (0.5, 4.0)]
    for low, high in pairs:
        for old in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
            lw, hw = old / low, old / high
            out = []
            for f in freqs:
                wl = 2 * math.pi / float(f)
                if wl < hw:
                    out.append(1.0)
                elif wl > lw:
                    out.append(factor)
                else:
                    s = (old / wl - low) / (high - low)
                    out.append(1 / ((1 - s) / factor + s))
            if np.allclose(np.asarray(out, dtype=np.float32), factors, rtol=1e-5, atol=1e-6):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": old,
                }
    return None


def _ids(meta: dict[str, Any], key: str) -> int | None:
    v = meta.get(f"tokenizer.ggml.{key}")
    return None if v is None or isinstance(v, list | np.ndarray) else int(v)


_MALFORMED = (TypeError, ValueError, KeyError, AttributeError, OverflowError, ZeroDivisionError)


def build(
    header: GGUFHeader, read_small: Callable[[str], np.ndarray]
) -> tuple[dict[str, Any], dict[str, Recipe]]:
    """(HF config, {HF tensor name: Recipe}). ``read_small`` dequantises a small tensor
    (rope_freqs, rope factors) for the config. Raises InputError for what is not supported,
    for metadata of the wrong type or out of range, and for tensor shapes that disagree with
    the metadata."""
    fname = header.path.name
    cfg = config_from_header(header, read_small)
    try:
        plan = _plan(
            cfg["gguf"]["architecture"],
            header.tensors,
            cfg["num_hidden_layers"],
            cfg["num_attention_heads"],
            cfg["num_key_value_heads"],
            cfg["head_dim"],
            fname,
        )
    except _MALFORMED as exc:
        raise InputError(f"{fname}: malformed metadata ({show(str(exc), 100)})") from None
    for hf, recipe in plan.items():
        got, want = recipe_shape(recipe, header.tensors), expected_shape(hf, cfg)
        if got != want:
            raise InputError(
                f"{fname}: {', '.join(recipe.sources)} has shape {list(got)}, but the "
                f"metadata implies {list(want)} for {hf}"
            )
    return cfg, plan


def config_from_header(
    header: GGUFHeader, read_small: Callable[[str], np.ndarray] | None = None
) -> dict[str, Any]:
    """The HF-style config alone (``read_small`` is needed only for rope tensors)."""

    def no_tensors(name: str) -> np.ndarray:
        raise InputError(f"{header.path.name}: {name} cannot be read here")

    try:
        return _config(header, read_small or no_tensors)
    except _MALFORMED as exc:
        raise InputError(
            f"{header.path.name}: malformed metadata ({show(str(exc), 100)})"
        ) from None


def _config(header: GGUFHeader, read_small: Callable[[str], np.ndarray]) -> dict[str, Any]:
    meta, tensors = header.metadata, header.tensors
    name = header.path.name
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise InputError(f"{name}: no general.architecture in the metadata")
    if arch not in ARCHS:
        raise InputError(
            f"{name}: architecture {show(arch)} is not supported (supported: {', '.join(ARCHS)})"
        )
    get = _arch_get(meta, arch)
    model_type = ARCHS[arch]
    try:
        n_layer = int(get("block_count"))
        hidden = int(get("embedding_length"))
        n_head = _uniform(get("attention.head_count"), "attention.head_count")
        n_kv = _uniform(get("attention.head_count_kv", n_head), "attention.head_count_kv")
        n_ff = _uniform(get("feed_forward_length"), "feed_forward_length")
    except (TypeError, ValueError):
        raise InputError(
            f"{name}: metadata lacks {arch}.block_count / embedding_length / "
            "attention.head_count / feed_forward_length"
        ) from None
    if not (0 < n_layer <= 1024 and 0 < hidden <= 1 << 20 and 0 < n_head <= 1024):
        raise InputError(f"{name}: implausible geometry ({n_layer} layers, {hidden} wide)")
    if n_kv <= 0 or n_head % n_kv:
        raise InputError(f"{name}: {n_head} heads cannot share {n_kv} key/value heads")
    head_dim = int(get("attention.key_length", hidden // n_head))
    if head_dim <= 0 or int(get("attention.value_length", head_dim)) != head_dim:
        raise InputError(f"{name}: key and value head sizes differ: not supported")
    if "token_embd.weight" not in tensors:
        raise InputError(f"{name}: no token_embd.weight tensor")
    vocab = tensors["token_embd.weight"].shape[0]
    tied = "output.weight" not in tensors
    theta = float(get("rope.freq_base", 10000.0))

    cfg: dict[str, Any] = {
        "architectures": [_ARCH_CLASS[arch]],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": n_ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": _num(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _num(theta),
        "rope_scaling": None,
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": _ids(meta, "bos_token_id"),
        "eos_token_id": _ids(meta, "eos_token_id"),
        "pad_token_id": _ids(meta, "padding_token_id"),
        "attention_bias": "blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors,
        "mlp_bias": False,
    }
    if arch in GEMMA:
        cfg["hidden_activation"] = cfg["hidden_act"] = "gelu_pytorch_tanh"
    else:
        cfg["hidden_act"] = "silu"

    rope_dim = get("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        cfg["partial_rotary_factor"] = int(rope_dim) / head_dim

    # rope scaling from metadata (linear / yarn), from tensors (llama3 rope_freqs, longrope)
    gguf_extra: dict[str, Any] = {}
    stype = get("rope.scaling.type")
    sfactor = get("rope.scaling.factor")
    if stype == "linear" and sfactor is not None:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": _num(sfactor)}
    elif stype == "yarn" and sfactor is not None:
        cfg["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": _num(sfactor),
            "original_max_position_embeddings": int(
                get("rope.scaling.original_context_length", cfg["max_position_embeddings"])
            ),
        }
    elif stype not in (None, "none", "linear", "yarn", "longrope"):
        cfg["rope_scaling"] = {"rope_type": str(stype)}
    if "rope_freqs.weight" in tensors:
        factors = read_small("rope_freqs.weight").reshape(-1)
        gguf_extra["rope_freqs"] = [float(x) for x in factors]
        rd = int(rope_dim) if rope_dim is not None else head_dim
        cfg["rope_scaling"] = infer_llama3(factors, theta, rd) or {"rope_type": "gguf_rope_freqs"}
    if arch == "phi3":
        orig = get("rope.scaling.original_context_length")
        if orig is not None:
            cfg["original_max_position_embeddings"] = int(orig)
        if "rope_factors_long.weight" in tensors and "rope_factors_short.weight" in tensors:
            cfg["rope_scaling"] = {
                "rope_type": "longrope",
                "long_factor": [float(x) for x in read_small("rope_factors_long.weight")],
                "short_factor": [float(x) for x in read_small("rope_factors_short.weight")],
            }
        sw = get("attention.sliding_window")
        cfg["sliding_window"] = int(sw) if sw else None

    if arch in ("gemma2", "gemma3"):
        default_sw = 4096 if arch == "gemma2" else None
        sw = get("attention.sliding_window", default_sw)
        cfg["sliding_window"] = int(sw) if sw else None
        # llama.cpp: 27B-class models scale by hidden/heads, the others by head_dim
        big = n_layer == (46 if arch == "gemma2" else 62)
        cfg["query_pre_attn_scalar"] = hidden // n_head if big else head_dim
        pattern = get("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
        if cfg["sliding_window"]:
            if isinstance(pattern, np.ndarray | list):
                swa = [bool(x) for x in pattern][:n_layer]
                if len(swa) != n_layer:
                    raise InputError(f"{name}: sliding_window_pattern has the wrong length")
            else:
                p = int(pattern)
                swa = [p == 0 or (i % p) < p - 1 for i in range(n_layer)]
            cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in swa]
        else:
            cfg["layer_types"] = ["full_attention"] * n_layer
        if arch == "gemma2":
            cfg["attn_logit_softcapping"] = _num(get("attn_logit_softcapping", 50.0))
            cfg["final_logit_softcapping"] = _num(get("final_logit_softcapping", 30.0))
        else:
            cfg["attn_logit_softcapping"] = None
            cfg["final_logit_softcapping"] = _num(get("final_logit_softcapping"))
            cfg["rope_local_base_freq"] = _num(get("rope.freq_base_swa", 10000.0))
    if arch == "gemma":
        cfg["hidden_act"] = "gelu"  # gemma 1 checkpoints say gelu; transformers runs tanh-gelu

    ftype = meta.get("general.file_type")
    counts: dict[str, int] = {}
    for t in tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    gguf_extra.update(
        {
            "architecture": arch,
            "name": meta.get("general.name"),
            "file_type": FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
            "tensor_types": counts,
            "version": header.version,
            "n_params": sum(t.n_elements for t in tensors.values()),
        }
    )
    cfg["gguf"] = gguf_extra
    return cfg


def recipe_shape(r: Recipe, tensors: dict[str, Any]) -> tuple[int, ...]:
    """The HF shape a recipe produces, from the header alone (trailing dims must agree)."""
    shapes = [tuple(tensors[s].shape) for s in r.sources]
    if len({sh[1:] for sh in shapes}) != 1:
        return (-1,)
    first = sum(sh[0] for sh in shapes)
    if r.rows is not None:
        lo, hi = r.rows
        if not 0 <= lo < hi <= first:
            return (-1,)
        first = hi - lo
    return (first, *shapes[0][1:])


def expected_shape(name: str, cfg: dict[str, Any]) -> tuple[int, ...]:
    """What the HF model of this config has for tensor ``name``."""
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    qd, kd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bias = name.endswith(".bias")
    part = name.rsplit(".", 2)[-2]
    out = {
        "embed_tokens": (v, h),
        "lm_head": (v, h),
        "q_norm": (hd,),
        "k_norm": (hd,),
        "q_proj": (qd, h),
        "k_proj": (kd, h),
        "v_proj": (kd, h),
        "qkv_proj": (qd + 2 * kd, h),
        "o_proj": (h, qd),
        "gate_proj": (ff, h),
        "up_proj": (ff, h),
        "gate_up_proj": (2 * ff, h),
        "down_proj": (h, ff),
    }.get(part, (h,))  # every other tensor is a norm over the hidden size
    return out[:1] if bias else out


_ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}


def _plan(
    arch: str,
    tensors: dict[str, Any],
    n_layer: int,
    n_head: int,
    n_kv: int,
    head_dim: int,
    fname: str,
) -> dict[str, Recipe]:
    shift = 1.0 if arch in GEMMA else 0.0
    permute = arch == "llama"
    plan: dict[str, Recipe] = {}

    def need(gname: str) -> str:
        if gname not in tensors:
            raise InputError(f"{fname}: tensor {gname!r} is missing")
        return gname

    def norm(gname: str) -> Recipe:
        return Recipe((need(gname),), shift=shift)

    plan["model.embed_tokens.weight"] = Recipe((need("token_embd.weight"),))
    plan["model.norm.weight"] = norm("output_norm.weight")
    if "output.weight" in tensors:
        plan["lm_head.weight"] = Recipe(("output.weight",))
    qd, kd = n_head * head_dim, n_kv * head_dim
    for i in range(n_layer):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        plan[h + "input_layernorm.weight"] = norm(b + "attn_norm.weight")
        if arch in ("gemma2", "gemma3"):
            plan[h + "post_attention_layernorm.weight"] = norm(b + "post_attention_norm.weight")
            plan[h + "pre_feedforward_layernorm.weight"] = norm(b + "ffn_norm.weight")
            plan[h + "post_feedforward_layernorm.weight"] = norm(b + "post_ffw_norm.weight")
        else:
            plan[h + "post_attention_layernorm.weight"] = norm(b + "ffn_norm.weight")
        for kind in ("weight", "bias"):
            sep = [f"{b}attn_{x}.{kind}" for x in "qkv"]
            fused = f"{b}attn_qkv.{kind}"
            have_sep = all(s in tensors for s in sep)
            if not have_sep and fused not in tensors:
                if kind == "weight":
                    raise InputError(f"{fname}: tensor {sep[0]!r} is missing")
                continue
            if arch == "phi3":
                src = tuple(sep) if have_sep else (fused,)
                plan[f"{h}self_attn.qkv_proj.{kind}"] = Recipe(src)
                continue
            spans = ((0, qd, n_head), (qd, qd + kd, n_kv), (qd + kd, qd + 2 * kd, None))
            for x, s, (lo, hi, heads) in zip("qkv", sep, spans, strict=True):
                perm = heads if permute else None
                target = f"{h}self_attn.{x}_proj.{kind}"
                plan[target] = (
                    Recipe((s,), unpermute=perm) if have_sep else Recipe((fused,), (lo, hi), perm)
                )
        plan[h + "self_attn.o_proj.weight"] = Recipe((need(b + "attn_output.weight"),))
        if b + "attn_output.bias" in tensors:
            plan[h + "self_attn.o_proj.bias"] = Recipe((b + "attn_output.bias",))
        if arch in ("qwen3", "gemma3"):
            plan[h + "self_attn.q_norm.weight"] = norm(b + "attn_q_norm.weight")
            plan[h + "self_attn.k_norm.weight"] = norm(b + "attn_k_norm.weight")
        if arch == "phi3":
            if b + "ffn_gate.weight" in tensors:
                src = (b + "ffn_gate.weight", need(b + "ffn_up.weight"))
            else:
                src = (need(b + "ffn_up.weight"),)
            plan[h + "mlp.gate_up_proj.weight"] = Recipe(src)
        else:
            plan[h + "mlp.gate_proj.weight"] = Recipe((need(b + "ffn_gate.weight"),))
            plan[h + "mlp.up_proj.weight"] = Recipe((need(b + "ffn_up.weight"),))
        plan[h + "mlp.down_proj.weight"] = Recipe((need(b + "ffn_down.weight"),))
    return plan
