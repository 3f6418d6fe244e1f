"""GGUF metadata and tensor names -> a HuggingFace config and HuggingFace tensor names.

The generic part of undoing llama.cpp's converter (convert_hf_to_gguf.py); what it did to each
architecture (renamed tensors, q/k rows permuted for ggml's rotary layout, norms stored as
1 + w, metadata keys and defaults) is the family's `GGUFTable`, in its file in attn_cli/models.
What is undone here for every architecture:

- The rows of q_proj and k_proj permuted by ``LlamaModel.permute`` (a table's permute_qk):
  it reshapes [n_head, 2, d/2, in] and swaps axes 1 and 2; the inverse is the same reshape
  with [n_head, d/2, 2, in]. For k_proj n_head is the number of key/value heads.
- A norm stored as shift + w (a table's norm_shift): the shift is subtracted.
- llama3 rope scaling is written as a ``rope_freqs.weight`` tensor of per-frequency divisors,
  not as metadata: the HF ``rope_scaling`` is recovered from it (exact divisors are kept in
  config["gguf"]["rope_freqs"]).
- A converter run with --fuse-qkv writes ``attn_qkv`` (Q, K, V concatenated; Q and K already
  permuted): split here. A HF model with one qkv_proj (a table's fused_qkv) gets separate
  tensors concatenated.

Every metadata value is checked as the family's args class checks the HF key it becomes
(type, range, finiteness); a bad one is one InputError naming the GGUF key and the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.gguf.header import GGUFHeader, show
from attn_cli.models.args import POSITIVE, POSITIVE_INT, TEXT, Kind, check
from attn_cli.models.registry import ABSENT, GGUFTable, gguf_table, gguf_tables

REQUIRED: Any = object()  # MetadataReader.value: the file must have the key

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
    """How one HF tensor is made from GGUF tensors: the sources' rows concatenated (a fused
    qkv_proj or gate_up_proj), a row slice (splitting a fused attn_qkv), the rotary row order
    undone (``unpermute`` = number of heads), a constant subtracted (a norm's shift), and
    per-head blocks joined (``per_head``)."""

    sources: tuple[str, ...]
    rows: tuple[int, int] | None = None
    unpermute: int | None = None
    shift: float = 0.0
    expert: int | None = None  # one expert's [out, in] of a stacked [experts, out, in] tensor
    # sources stored per head, (heads, rows, in) each, or (heads, in, rows) where True: joined
    # head by head into one (heads·Σ rows, in) matrix (a table's per_head_tensors)
    per_head: tuple[bool, ...] | None = None


def unpermute_index(n_rows: int, n_head: int) -> np.ndarray:
    """For each HF row, the GGUF row it is stored in (inverse of LlamaModel.permute)."""
    if n_rows % (2 * n_head):
        raise InputError(f"cannot undo the rotary row order: {n_rows} rows for {n_head} heads")
    idx = np.arange(n_rows)
    return idx.reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


class MetadataReader:
    """One file's metadata for one architecture, every value checked as it is read."""

    def __init__(
        self, header: GGUFHeader, table: GGUFTable, read_small: Callable[[str], np.ndarray]
    ) -> None:
        self.meta, self.tensors, self.fname = header.metadata, header.tensors, header.path.name
        self.table, self.read_small = table, read_small

    def label(self, key: str) -> str:
        """How messages name ``{arch}.{key}``."""
        return f"{self.fname}: malformed metadata: {self.table.arch}.{key}"

    def raw(self, key: str, default: Any = None) -> Any:
        return self.meta.get(f"{self.table.arch}.{key}", default)

    def value(self, key: str, hf_key: str, default: Any = REQUIRED) -> Any:
        """``{arch}.{key}``, checked as the family's args check ``hf_key``; ``default`` when
        the file leaves it out."""
        full = f"{self.table.arch}.{key}"
        if full not in self.meta:
            if default is REQUIRED:
                raise InputError(f"{self.fname}: metadata lacks {full}")
            return default
        return self.table.args.check(hf_key, self.meta[full], self.label(key))

    def checked(self, kind: Kind, key: str, default: Any = None) -> Any:
        """``{arch}.{key}`` checked as ``kind`` (for values no HF key holds as they are)."""
        value = self.raw(key)
        return default if value is None else check(kind, value, self.label(key))

    def uniform(self, key: str, hf_key: str, default: Any = REQUIRED) -> Any:
        """A value some converters write per layer (head counts): all layers must agree."""
        value = self.raw(key)
        if isinstance(value, np.ndarray | list):
            items = value.tolist() if isinstance(value, np.ndarray) else value
            for v in items:
                self.table.args.check(hf_key, v, self.label(key))
            if len(set(items)) != 1:
                raise InputError(
                    f"{self.fname}: {self.table.arch}.{key} differs between layers "
                    f"({sorted(set(items))}): not supported"
                )
            return items[0]
        return self.value(key, hf_key, default)

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors


def _num(value: Any) -> Any:
    """Metadata numbers as plain Python numbers; float32 values rounded to their shortest
    decimal (1e-5 stored as float32 reads 9.99999974e-06; HF configs say 1e-05). Anything else
    (None, strings, flags) as it is."""
    if value is None or isinstance(value, bool | str):
        return value
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
    table = table_for(cfg["gguf"]["architecture"], fname, header.metadata)
    try:
        plan = _plan(
            table,
            header.tensors,
            cfg["num_hidden_layers"],
            cfg["num_attention_heads"],
            cfg["num_key_value_heads"],
            cfg["head_dim"],
            fname,
            cfg.get("num_local_experts")
            or cfg.get("num_experts")
            or cfg.get("n_routed_experts")
            or 0,
        )
    except _MALFORMED as exc:
        raise InputError(f"{fname}: malformed metadata ({show(str(exc), 100)})") from None
    for hf, recipe in plan.items():
        got = recipe_shape(recipe, header.tensors)
        want = (table.shape and table.shape(hf, cfg)) or expected_shape(hf, cfg, table.qk_norm_full)
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


def table_for(arch: object, fname: str, meta: Mapping[str, Any]) -> GGUFTable:
    """The family table of a general.architecture (for a file with experts, the table of its
    experts where the architecture has one), or an InputError saying which are supported."""
    tables = gguf_tables()
    if not isinstance(arch, str):
        raise InputError(f"{fname}: no general.architecture in the metadata")
    table = gguf_table(arch, meta)
    if table is None:
        raise InputError(
            f"{fname}: architecture {show(arch)} is not supported (supported: {', '.join(tables)})"
        )
    return table


def _config(header: GGUFHeader, read_small: Callable[[str], np.ndarray]) -> dict[str, Any]:
    meta, tensors = header.metadata, header.tensors
    name = header.path.name
    table = table_for(meta.get("general.architecture"), name, meta)
    m = MetadataReader(header, table, read_small)
    n_layer = m.value("block_count", "num_hidden_layers")
    hidden = m.value("embedding_length", "hidden_size")
    n_head = m.uniform("attention.head_count", "num_attention_heads")
    n_kv = m.uniform("attention.head_count_kv", "num_key_value_heads", n_head)
    n_ff = m.uniform("feed_forward_length", "intermediate_size")
    if not (n_layer <= 1024 and hidden <= 1 << 20 and n_head <= 1024):
        raise InputError(f"{name}: implausible geometry ({n_layer} layers, {hidden} wide)")
    if n_head % n_kv:
        raise InputError(f"{name}: {n_head} heads cannot share {n_kv} key/value heads")
    head_dim = hidden // n_head  # a table that reads its own head sizes sets them (adapt)
    if not table.own_attention:
        head_dim = m.value("attention.key_length", "head_dim", head_dim)
        value_dim = m.value("attention.value_length", "head_dim", head_dim)
        if not head_dim or value_dim != head_dim:
            raise InputError(f"{name}: key and value head sizes differ: not supported")
    if "token_embd.weight" not in tensors:
        raise InputError(f"{name}: no token_embd.weight tensor")
    vocab = tensors["token_embd.weight"].shape[0]
    tied = "output.weight" not in tensors
    theta = m.value("rope.freq_base", "rope_theta", 10000.0)

    cfg: dict[str, Any] = {
        "architectures": [table.hf_class],
        "model_type": table.model_type,
        "hidden_size": hidden,
        "intermediate_size": n_ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": _num(m.value("attention.layer_norm_rms_epsilon", "rms_norm_eps", 1e-6)),
        "rope_theta": _num(theta),
        "rope_scaling": None,
        "max_position_embeddings": m.value("context_length", "max_position_embeddings", 2048),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": _ids(meta, "bos_token_id"),
        "eos_token_id": _ids(meta, "eos_token_id"),
        "pad_token_id": _ids(meta, "padding_token_id"),
        "attention_bias": "blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors,
        "mlp_bias": False,
        **table.config,
    }

    rope_dim = m.checked(POSITIVE_INT, "rope.dimension_count")
    if rope_dim is not None and rope_dim != head_dim and not table.own_attention:
        if rope_dim % 2 or rope_dim > head_dim:
            raise InputError(
                f"{m.label('rope.dimension_count')} must be even and at most the head size "
                f"{head_dim}, got {rope_dim}"
            )
        cfg["partial_rotary_factor"] = rope_dim / head_dim

    # rope scaling from metadata (linear / yarn), from tensors (llama3 rope_freqs)
    gguf_extra: dict[str, Any] = {}
    stype = m.checked(TEXT, "rope.scaling.type")
    sfactor = m.checked(POSITIVE, "rope.scaling.factor")
    if stype == "linear" and sfactor is not None:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": _num(sfactor)}
    elif stype == "yarn" and sfactor is not None:
        cfg["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": _num(sfactor),
            "original_max_position_embeddings": m.checked(
                POSITIVE_INT, "rope.scaling.original_context_length", cfg["max_position_embeddings"]
            ),
        }
    elif stype not in (None, "none", "linear", "yarn", "longrope"):
        cfg["rope_scaling"] = {"rope_type": str(stype)}
    if "rope_freqs.weight" in tensors:
        factors = read_small("rope_freqs.weight").reshape(-1)
        gguf_extra["rope_freqs"] = [float(x) for x in factors]
        rd = rope_dim if rope_dim is not None else head_dim
        cfg["rope_scaling"] = infer_llama3(factors, theta, rd) or {"rope_type": "gguf_rope_freqs"}

    for key, (hf_key, default) in table.metadata.items():
        value = m.value(key, hf_key, default)
        if value is not ABSENT:
            cfg[hf_key] = _num(value)
    if table.adapt is not None:
        table.adapt(m, cfg)

    ftype = meta.get("general.file_type")
    counts: dict[str, int] = {}
    for t in tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    gguf_extra.update(
        {
            "architecture": table.arch,
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
    if r.expert is not None:
        stacked = shapes[0]
        return stacked[1:] if len(stacked) == 3 and 0 <= r.expert < stacked[0] else (-1,)
    if r.per_head is not None:  # (heads, rows, in) blocks, or (heads, in, rows) transposed
        blocks = [
            (sh[0], sh[2], sh[1]) if t else sh for sh, t in zip(shapes, r.per_head, strict=True)
        ]
        if any(len(b) != 3 for b in blocks) or len({(b[0], b[2]) for b in blocks}) != 1:
            return (-1,)
        return (blocks[0][0] * sum(b[1] for b in blocks), blocks[0][2])
    if len({sh[1:] for sh in shapes}) != 1:
        return (-1,)
    first = sum(sh[0] for sh in shapes)
    if r.rows is not None:
        lo, hi = r.rows
        if not 0 <= lo < hi <= first:
            return (-1,)
        first = hi - lo
    return (first, *shapes[0][1:])


def expected_shape(name: str, cfg: dict[str, Any], qk_norm_full: bool = False) -> tuple[int, ...]:
    """What the HF model of this config has for tensor ``name`` (`qk_norm_full`: q/k norms
    over all heads at once, OLMo 2)."""
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, experts = cfg["head_dim"], cfg.get("num_local_experts", 0)
    if name.endswith(".sinks"):  # gpt-oss: one sink logit per head
        return (cfg["num_attention_heads"],)
    qd, kd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bias = name.endswith(".bias")
    part = name.rsplit(".", 2)[-2]
    if ".experts." in name:  # one expert of a mixture: its own width
        ff = cfg.get("moe_intermediate_size") or ff
    out = {
        "embed_tokens": (v, h),
        "lm_head": (v, h),
        "q_norm": (qd,) if qk_norm_full else (hd,),
        "k_norm": (kd,) if qk_norm_full else (hd,),
        "q_proj": (qd, h),
        "k_proj": (kd, h),
        "v_proj": (kd, h),
        "qkv_proj": (qd + 2 * kd, h),
        "o_proj": (h, qd),
        "gate_proj": (ff, h),
        "up_proj": (ff, h),
        "gate_up_proj": (2 * ff, h),
        "down_proj": (h, ff),
        "router": (experts, h),  # gpt-oss's router
        "w1": (ff, h),  # Mixtral's expert gate, up (w3) and down (w2)
        "w3": (ff, h),
        "w2": (h, ff),
        "gate": (cfg.get("num_local_experts") or cfg.get("num_experts") or 0, h),  # a router
    }.get(part, (h,))  # every other tensor is a norm over the hidden size
    out = out[:1] if bias else out
    # gpt-oss's stacked experts, all in one tensor (mlp.experts.gate_proj.weight, not one
    # expert's mlp.experts.{e}.gate_proj.weight): [E, out, in]
    stacked = ".experts." in name and not name.split(".experts.")[1][:1].isdigit()
    return (experts, *out) if stacked else out


def _plan(
    table: GGUFTable,
    tensors: dict[str, Any],
    n_layer: int,
    n_head: int,
    n_kv: int,
    head_dim: int,
    fname: str,
    n_experts: int = 0,
) -> dict[str, Recipe]:
    plan: dict[str, Recipe] = {}

    def need(gname: str) -> str:
        if gname not in tensors:
            raise InputError(f"{fname}: tensor {gname!r} is missing")
        return gname

    def recipe(hf: str, sources: tuple[str, ...]) -> Recipe:
        return Recipe(sources, shift=table.norm_shift if hf.endswith("norm.weight") else 0.0)

    plan["model.embed_tokens.weight"] = Recipe((need("token_embd.weight"),))
    plan["model.norm.weight"] = recipe("model.norm.weight", (need("output_norm.weight"),))
    if "output.weight" in tensors:
        plan["lm_head.weight"] = Recipe(("output.weight",))
    qd, kd = n_head * head_dim, n_kv * head_dim
    for i in range(n_layer):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        for hf, sources in table.layer_tensors.items():
            if isinstance(sources, str):
                plan[h + hf] = recipe(hf, (need(b + sources),))
                continue
            found = next(
                (alt for alt in sources if all(b + s in tensors for s in alt)), sources[-1]
            )
            plan[h + hf] = recipe(hf, tuple(need(b + s) for s in found))
        for hf, gname in table.optional_layer_tensors.items():
            if b + gname in tensors:
                plan[h + hf] = recipe(hf, (b + gname,))
        for hf, gname in table.experts.items():  # stacked experts: one recipe per expert
            if b + gname not in tensors and b + "ffn_gate.weight" in tensors:
                continue  # a dense layer of a model with both (DeepSeek's first layers)
            stacked = tensors[need(b + gname)].shape
            if len(stacked) != 3 or stacked[0] != n_experts:
                raise InputError(
                    f"{fname}: {b + gname} has shape {list(stacked)}, but the metadata implies "
                    f"{n_experts} experts"
                )
            for e in range(n_experts):
                plan[h + hf.format(e=e)] = Recipe((b + gname,), expert=e)
        for hf, parts in table.per_head_tensors.items():
            if h + hf not in plan:
                srcs = tuple(need(b + g) for g, _ in parts)
                plan[h + hf] = Recipe(srcs, per_head=tuple(t for _, t in parts))
        if table.own_attention:
            continue
        for kind in ("weight", "bias"):
            sep = [f"{b}attn_{x}.{kind}" for x in "qkv"]
            fused = f"{b}attn_qkv.{kind}"
            have_sep = all(s in tensors for s in sep)
            if not have_sep and fused not in tensors:
                if kind == "weight":
                    raise InputError(f"{fname}: tensor {sep[0]!r} is missing")
                continue
            if table.fused_qkv:
                src = tuple(sep) if have_sep else (fused,)
                plan[f"{h}self_attn.qkv_proj.{kind}"] = Recipe(src)
                continue
            spans = ((0, qd, n_head), (qd, qd + kd, n_kv), (qd + kd, qd + 2 * kd, None))
            for x, s, (lo, hi, heads) in zip("qkv", sep, spans, strict=True):
                perm = heads if table.permute_qk else None
                target = f"{h}self_attn.{x}_proj.{kind}"
                plan[target] = (
                    Recipe((s,), unpermute=perm) if have_sep else Recipe((fused,), (lo, hi), perm)
                )
    return plan
