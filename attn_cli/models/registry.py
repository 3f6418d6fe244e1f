"""One registry of architecture families.

A family is one file in this package that defines ``FAMILY = Family(...)``: what it runs
(config ``model_type`` values), the args dataclass that reads and checks its config, how its
checkpoint is recognised, its forward pass as small numpy functions, its GGUF tables (what
llama.cpp's converter did to it), what it can do (LM head, norm placement, linear value path,
sentence pairs), and the words its steps are described with. Adding a family is that one file
and its tests: the registry finds it, nothing else changes, and no other module names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

import attn_cli.models as pkg
from attn_cli.models.args import Args
from attn_cli.records import LayerRecord

Config = Mapping[str, Any]

# Where a layer normalises: before attention and MLP (GPT-2, Llama), after each residual sum
# (BERT), or both before and after each sublayer (Gemma 2/3).
NormPlacement = Literal["pre", "post", "sandwich"]


class WeightSource(Protocol):
    """A checkpoint's tensors by name, float32, read (and dequantised) on access."""

    def __getitem__(self, name: str) -> np.ndarray: ...

    def __contains__(self, name: object) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        """Rows `ids` of a 2-D table (embeddings) without reading the whole table."""
        ...


class Dims(NamedTuple):
    """The geometry every family reports the same way."""

    layers: int
    heads: int
    kv_heads: int
    hidden: int
    head_dim: int
    vocab: int
    max_positions: int | None  # None: no learned position table (rotary models)


@dataclass(frozen=True)
class Wording:
    """How a family's own steps read; the step catalogue (narrate.py) fills in the rest."""

    x_formula: str = "hidden states"  # the formula of layer i's X step
    # How layer i's X was made, completing "Layer i's input: one d-number vector per token…"
    x_description: Callable[[int], str] = lambda i: "."
    mask: str = "A token may not look at later tokens, so their scores are −∞."
    final: str = "The model's output: one vector per token after every layer."


# A GGUF tensor a HF tensor is made from: one name, or alternatives (the first whose tensors
# are all in the file), each a tuple of names whose rows are concatenated.
GGUFSources = str | tuple[tuple[str, ...], ...]
# gguf/to_hf.py: a GGUF metadata value the file leaves out is not put in the config at all.
ABSENT: Any = object()


@dataclass(frozen=True)
class GGUFTable:
    """What llama.cpp's converter did to one GGUF architecture of a family, as data, so
    gguf/to_hf.py can undo it without knowing the family."""

    arch: str  # general.architecture
    model_type: str  # the HF model_type it converts back to
    hf_class: str  # config.json's architectures entry
    args: type[Args]  # checks the metadata values, by the HF config key each becomes
    # per layer: HF name under model.layers.{i}. -> GGUF name(s) under blk.{i}.
    layer_tensors: Mapping[str, GGUFSources]
    optional_layer_tensors: Mapping[str, str] = field(default_factory=dict)
    # GGUF key after "{arch}." -> (HF config key, value when the file leaves it out; ABSENT:
    # leave the key out, so the args default applies)
    metadata: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)  # HF values no GGUF key carries
    permute_qk: bool = False  # q/k rows in ggml's rotary order (LlamaModel.permute)
    norm_shift: float = 0.0  # every *norm.weight stored as shift + w (Gemma: 1 + w)
    fused_qkv: bool = False  # the HF model has one qkv_proj (Phi-3)
    qk_norm_full: bool = False  # q/k norms over all heads at once, H·head_dim wide (OLMo 2)
    # A mixture of experts stacked in one GGUF tensor [experts, out, in] per projection: HF name
    # of one expert's matrix under model.layers.{i}. ({e}: its number) -> the GGUF name under
    # blk.{i}.; the number of experts is config num_experts (or num_local_experts)
    experts: Mapping[str, str] = field(default_factory=dict)
    # Reads only the files of its architecture with {arch}.expert_count > 0 (Mixtral, which
    # llama.cpp stores as "llama"); the architecture's other table reads the rest.
    with_experts: bool = False
    # per layer: HF name -> GGUF tensors stored per head, each (heads, rows, in), or (heads,
    # in, rows) where flagged (stored transposed), joined head by head into one matrix; used
    # when the file has no other source of the HF name (DeepSeek's kv_b_proj from attn_k_b
    # and attn_v_b)
    per_head_tensors: Mapping[str, tuple[tuple[str, bool], ...]] = field(default_factory=dict)
    # The table names every attention tensor itself (no attn_q/k/v), the file's key and value
    # lengths are its own to read (adapt), and `shape` gives the HF shapes of the tensors the
    # generic rule does not know, None for the rest (DeepSeek's latent attention, experts)
    own_attention: bool = False
    shape: Callable[[str, Mapping[str, Any]], tuple[int, ...] | None] | None = None
    # The HF model_type when the metadata decides it (DeepSeek: V2 or V3 by the gating
    # function), from the whole metadata; None: always `model_type`
    model_type_of: Callable[[Mapping[str, Any]], str] | None = None
    # What no table can say (values that depend on several keys, config from tensors):
    # adapt(metadata reader, config being built), see gguf/to_hf.py's MetadataReader.
    adapt: Callable[[Any, dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class Vision:
    """What an image family adds: pictures in instead of token ids."""

    processor: (
        str  # whose image processor defaults apply (images.PROCESSORS): "ViTImageProcessor" …
    )
    image_size: Callable[[Config], int]  # the side the model was trained at, in pixels
    patch_size: Callable[[Config], int]  # the side of a patch, in pixels
    prefix: Callable[[Config], list[str]]  # the tokens before the patches: "[CLS]", "reg0" …
    # pixels (3, H, W) -> the first hidden states (prefix + rows·cols patches, d), the grid
    embed: Callable[[WeightSource, np.ndarray, Config], tuple[np.ndarray, tuple[int, int]]]
    # the last layer's output -> the model's pooled image vector (d,)
    pooled: Callable[[WeightSource, np.ndarray, Config], np.ndarray]
    # An attention-pooling head's map (SigLIP): the last output -> (heads, 1, n) weights of its
    # learned probe over the tokens; None without one.
    pool_map: Callable[[WeightSource, np.ndarray, Config], np.ndarray | None] | None = None


@dataclass(frozen=True, kw_only=True)
class Seq2Seq:
    """What an encoder–decoder family adds (T5, BART, Marian, Whisper …): a source sequence
    encoded once, a target sequence decoded against it (attn_cli/seq2seq.py runs it).

    The Family's own `embed`, `layers` and `final` are the ENCODER's (the source side): embed
    takes the source inputs (token ids for text; whatever `read_source` returns otherwise),
    layers yields one LayerRecord per encoder layer whose one block is "encoder", over the
    "source" axis. The decoder is below: each of its LayerRecords holds two blocks, the causal
    self-attention ("decoder", tokens × tokens) then the cross-attention ("cross", tokens ×
    source, records.multi_head_attention(memory=encoder output, key_axis="source")).
    """

    decoder_layers: Callable[[Config], int]  # how many decoder layers (may differ from encoder)
    # target ids -> the decoder's first hidden states (n_target, d); position 0 is the first id
    embed_target: Callable[[WeightSource, list[int], Config], np.ndarray]
    # (target hidden states, encoder output) -> one LayerRecord per decoder layer
    decoder: Callable[[WeightSource, np.ndarray, np.ndarray, Config], Iterator[LayerRecord]]
    # the decoder's last layer output -> its final hidden states (final norm …)
    decoder_final: Callable[[WeightSource, np.ndarray, Config], np.ndarray]
    # the decoder's final hidden states -> logits over the vocabulary (n_target, vocab)
    logits: Callable[[WeightSource, np.ndarray, Config], np.ndarray]
    # Sources that are not text (Whisper's audio): (model, what the user gave) -> the encoder
    # inputs, the source axis (trace.Axis: its labels, kind "frames", coords), notes for the
    # trace (audio windowed to 30 s …) and the source's name; None: text, tokenised by the
    # checkpoint's tokenizer.json.
    read_source: Callable[[Any, Any], tuple[Any, Any, list[str], str]] | None = None
    # Generation beyond generation_config.json's standard fields (Whisper's task/language
    # prompt, suppressed tokens …): (config, generation config, plan) -> the plan to use
    # (seq2seq.Plan); None: the standard fields only.
    plan: Callable[[Config, Mapping[str, Any], Any], Any] | None = None
    # Word times (Whisper's timestamps=True): (model, encoder inputs, decoder sequence, prompt
    # length, decoder LayerRecords, generation config) -> (trace steps, config entries).
    words: Callable[..., tuple[list[Any], dict[str, Any]]] | None = None
    # What a source position is called in the steps' words ("source token", "audio frame").
    source_words: str = "source token"


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str  # shown to users: "bert", "gpt2", "llama" …
    model_types: tuple[str, ...]  # config.json model_type values this family runs
    anchor: str  # a tensor name that every checkpoint of the family has (finds the prefix)
    causal: bool
    norm: NormPlacement  # ALTI reads the norm after attention unless "pre"
    # The value path is linear: O = Σ_j W_ij (x_j W_v + b_v) W_o (the norms and ALTI methods
    # decompose it so)
    linear_values: bool
    sentence_pairs: bool  # embed() takes segments (token type ids) for a sentence pair
    dims: Callable[[Config], Dims]
    check: Callable[[WeightSource, Config], None]  # shapes vs config, refused options
    embed: Callable[[WeightSource, list[int], Config], np.ndarray]  # ids -> (n, d)
    # The forward pass: per layer, a record of each attention block and the layer's output.
    layers: Callable[[WeightSource, np.ndarray, Config], Iterator[LayerRecord]]
    final: Callable[[WeightSource, np.ndarray, Config], np.ndarray]  # last hidden states
    logits: Callable[[WeightSource, np.ndarray, Config], np.ndarray] | None = None  # LM head
    wording: Wording = field(default_factory=Wording)
    # Checkpoint quirks fixed on load (renamed tensors …): name -> name; None keeps names.
    rename: Callable[[str], str] | None = None
    # Families with a norm after the attention (`norm` not "pre"): layer i's norm, for ALTI:
    # (γ, β, ε) of a LayerNorm on (residual + O) (BERT); (γ, β, ε, rms, "attn") for a norm on O
    # alone before the residual (Gemma 2/3); None for a layer without one.
    attn_out_norm: Callable[[WeightSource, int, Config], Any] | None = None
    # What the config means for attention (layer types, windows, scales, caps, rope), recorded
    # in the trace's config as "architecture"; JSON-serialisable.
    describe: Callable[[Config], dict[str, Any]] | None = None
    # The words of the family's own stages, by name (narrate.StageText), consulted before the
    # step catalogue: a stage only this family computes is described next to its code.
    stage_texts: Mapping[str, Callable[..., tuple[str, str]]] = field(default_factory=dict)
    gguf: tuple[GGUFTable, ...] = ()  # the GGUF architectures of this family

    @property
    def lm_head(self) -> bool:
        """The family predicts next tokens (the logit lens and the prediction need it)."""
        return self.logits is not None

    # Image families: how a picture becomes hidden states (None: the family reads text).
    vision: Vision | None = None
    # Encoder–decoder families: the decoder and its generation (None: one stack).
    seq2seq: Seq2Seq | None = None


# Modules of this package that are not families.
_NOT_FAMILIES = {"registry", "layers", "checkpoint", "weights", "rope", "args"}


@cache
def families() -> dict[str, Family]:
    """model_type -> Family, from every family module of this package (imported on first use)."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in _NOT_FAMILIES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"attn_cli.models.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            for model_type in family.model_types:
                found[model_type] = family
    return found


def supported() -> list[str]:
    return sorted(families())


def family_for(model_type: str) -> Family | None:
    return families().get(model_type)


@cache
def gguf_tables() -> dict[str, GGUFTable]:
    """GGUF general.architecture -> its table, from every family."""
    return {t.arch: t for t in _all_gguf_tables() if not t.with_experts}


def _all_gguf_tables() -> list[GGUFTable]:
    unique = {id(f): f for f in families().values()}.values()
    return [t for family in unique for t in family.gguf]


def gguf_table(arch: str, meta: Mapping[str, Any]) -> GGUFTable | None:
    """The table that reads a file of this architecture: the one for files with experts when
    its metadata counts some ({arch}.expert_count) and the architecture has one."""
    count = meta.get(f"{arch}.expert_count")
    if isinstance(count, int | np.integer) and not isinstance(count, bool) and count > 0:
        moe = [t for t in _all_gguf_tables() if t.arch == arch and t.with_experts]
        if moe:
            return moe[0]
    return gguf_tables().get(arch)
