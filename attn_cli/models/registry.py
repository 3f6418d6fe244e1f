"""One registry of architecture families.

A family is one file in this package that defines ``FAMILY = Family(...)``: what it runs
(config ``model_type`` values), how its checkpoint is recognised, its forward pass as small
numpy functions, and the words its steps are described with. Adding a family is that one file
and its tests: the registry finds it, nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple, Protocol

import numpy as np

from attn_cli.records import LayerRecord

Config = Mapping[str, Any]


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


@dataclass(frozen=True)
class Vision:
    """What an image family adds: pictures in instead of token ids."""

    processor: str  # whose image processor defaults apply (images.PROCESSORS): "vit", "clip" …
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


@dataclass(frozen=True)
class Family:
    name: str  # shown to users: "bert", "gpt2", "llama" …
    model_types: tuple[str, ...]  # config.json model_type values this family runs
    anchor: str  # a tensor name that every checkpoint of the family has (finds the prefix)
    causal: bool
    norm: str  # e.g. "post-LayerNorm", "pre-RMSNorm": for `models` and the trace config
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
    # Families with a norm after the attention ("post" in `norm`): layer i's norm, for ALTI:
    # (γ, β, ε) of a LayerNorm on (residual + O) (BERT); (γ, β, ε, rms, "attn") for a norm on O
    # alone before the residual (Gemma 2/3); None for a layer without one.
    attn_out_norm: Callable[[WeightSource, int, Config], Any] | None = None
    # What the config means for attention (layer types, windows, scales, caps, rope), recorded
    # in the trace's config as "architecture"; JSON-serialisable.
    describe: Callable[[Config], dict[str, Any]] | None = None
    # The words of the family's own stages, by name (narrate.StageText), consulted before the
    # step catalogue: a stage only this family computes is described next to its code.
    stage_texts: Mapping[str, Callable[..., tuple[str, str]]] = field(default_factory=dict)
    # Image families: how a picture becomes hidden states (None: the family reads text).
    vision: Vision | None = None


# Modules of this package that are not families.
_NOT_FAMILIES = {"registry", "layers", "checkpoint", "weights", "rope"}


@cache
def families() -> dict[str, Family]:
    """model_type -> Family, from every family module of this package (imported on first use)."""
    import attn_cli.models as pkg

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
