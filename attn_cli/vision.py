"""A vision model's run as a Trace: a picture in, attention over its patches out.

The trace's tokens are the model's own tokens before the patches ("[CLS]", "[DIST]", "reg0" …)
then one per patch, "p(row,col)", row by row; `Trace.axes["tokens"]` is a "patches" axis whose
coords give each patch's (row, column) (None for the tokens that are not patches). The token
ids are the positions 0 … n−1 (a picture has no vocabulary). `config["image"]` records the
picture, its preparation, the patch grid, the register tokens and high-norm outlier patches, and
a small thumbnail of what the model saw, so views can draw on it from a saved trace too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from attn_cli import memory, narrate
from attn_cli.errors import opt
from attn_cli.images import open_image, prepare, thumbnail
from attn_cli.methods.registry import MethodRun
from attn_cli.models._vision import patch_labels
from attn_cli.records import TOKENS
from attn_cli.trace import Axis, Trace, TraceStep, dim_labels, token_labels

# A patch whose output vector is this many times longer than the median patch's is an outlier
# (Darcet et al., "Vision Transformers Need Registers": such tokens are 10× longer and carry
# global information instead of their patch's).
OUTLIER_RATIO = 4.0


def source_name(source: Any) -> str:
    """How a picture is named in the trace: its path, or what kind of object it was."""
    if isinstance(source, str):
        return source
    if hasattr(source, "__fspath__"):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array {source.shape[1]}×{source.shape[0]}"
    return type(source).__name__


def outliers(h: np.ndarray, first_patch: int) -> list[int]:
    """Token indices of patches whose vector is OUTLIER_RATIO times the median patch's length."""
    norms = np.linalg.norm(h[first_patch:].astype(np.float64), axis=1)
    if len(norms) < 2:
        return []
    median = float(np.median(norms))
    return [first_patch + int(i) for i in np.flatnonzero(norms > OUTLIER_RATIO * median)]


def image_trace(
    model: Any,
    source: Any,
    layers: list[int],
    heads: list[int],
    keep: narrate.StepFilter,
    methods: str | Sequence[str] | None,
    method_options: Any,
    bar: Any,
) -> Trace:
    """`model` (a pretrained.Model of an image family) run on the picture `source`."""

    family, cfg, d, w = model.family, model.config, model.dims, model.weights
    vision = family.vision
    assert vision is not None
    if bar is not None:
        bar.phase("reading the picture")
    prepared = prepare(open_image(source), model.preprocessor)
    h, grid = vision.embed(w, prepared.pixels, cfg)
    prefix, patch = vision.prefix(cfg), vision.patch_size(cfg)
    patches, coords = patch_labels(grid)
    tokens = prefix + patches
    n = len(tokens)
    kinds = sum(keep(k) for k in ("W_raw", "W_scaled", "W"))
    need = memory.model_bytes(
        n, d.heads, len(layers), kinds, d.layers, model.weights.parameters(), bool(methods)
    )
    memory.check_fits(
        need,
        f"the picture is {n:,} tokens, over {len(layers)} layers of {d.heads} heads",
        f"choose fewer layers ({opt('layer')}) or fewer steps ({opt('steps')})",
    )
    labels = token_labels(tokens)
    every = len(layers) == d.layers
    runs_to_end = every or layers[-1] == d.layers - 1 or bool(methods)
    image: dict[str, Any] = {
        "source": source_name(source),
        "size": list(prepared.original),
        "input": [int(prepared.pixels.shape[1]), int(prepared.pixels.shape[2])],
        "patch": patch,
        "grid": list(grid),
        "prefix": prefix,
        "registers": [i for i, t in enumerate(prefix) if t.startswith("reg")],
        "preprocessing": model.preprocessor.describe(),
        # what the patches cover (a strided convolution drops the pixels past the last patch)
        "thumbnail": thumbnail(prepared.seen[: grid[0] * patch, : grid[1] * patch], grid),
    }
    config: dict[str, Any] = {
        "pipeline": "model",
        "model": model.name,
        "model_path": str(model.path),
        "model_type": cfg.get("model_type", family.name),
        "input": "image",
        "layers": d.layers,
        "heads": d.heads,
        "hidden": d.hidden,
        "d_k": d.head_dim,
        "layer": "all" if every else (layers[0] if len(layers) == 1 else layers),
        "head": "all" if len(heads) == d.heads else (heads[0] if len(heads) == 1 else heads),
        "causal": False,
        "image": image,
    }
    trace = Trace(image["source"], tokens, list(range(n)), config)
    coord_list: list[tuple[float, ...]] = [()] * len(prefix) + list(coords)
    trace.axes[TOKENS] = Axis(TOKENS, "patches", labels, coord_list)
    voice = narrate.Voice(teaching=False, mask=family.wording.mask)
    texts = {
        **family.stage_texts,
        "X": narrate.layer_input(family.wording.x_formula, family.wording.x_description),
    }
    run = None
    if methods:
        run = MethodRun(
            methods, labels, list(range(n)), model.parts(), layers, heads, method_options
        )
        config["methods"] = run.methods
    wanted = set(layers)
    for i, layer in enumerate(family.layers(w, h, cfg)):
        if bar is not None:
            bar.phase(f"{n:,} tokens · layer {i + 1} of {d.layers}")
        h = layer.out
        if run is not None:
            run.add(i, layer)
        if i in wanted:
            trace.steps += narrate.model_layer_steps(
                layer, i, heads, trace.axes, voice, texts, keep=keep
            )
        if i >= layers[-1] and not runs_to_end:
            break  # don't compute layers nobody asked for
    if runs_to_end:
        out = family.final(w, h, cfg)
        image["outliers"] = outliers(out, len(prefix))
        final = narrate.final_step(out, labels, family.wording.final)
        if every and keep(final.name):
            trace.steps.append(final)
        pool = None if vision.pool_map is None else vision.pool_map(w, out, cfg)
        if pool is not None and keep("W_pool"):
            trace.steps += [
                TraceStep(
                    "W_pool",
                    "softmax(q_probe·Kᵀ / √d_k) per head",
                    f"The pooling head's attention, head {h}: how much its one learned query (the "
                    "probe) takes from each token of the output to make the pooled vector.",
                    pool[h],
                    ["probe"],
                    labels,
                    "weights",
                    head=h,
                    col_axis=TOKENS,
                )
                for h in range(pool.shape[0])
            ]
        pooled = vision.pooled(w, out, cfg).reshape(1, -1)
        if keep("pooled"):
            trace.steps.append(
                TraceStep(
                    "pooled",
                    "pooled image vector",
                    "The model's one vector for the whole picture (what a classifier or an "
                    "image–text similarity reads).",
                    pooled,
                    ["image"],
                    dim_labels(pooled.shape[1]),
                    "vectors",
                )
            )
    if run is not None:
        extra, notes = run.finish()
        trace.steps += [s for s in extra if keep(s.name.split("@")[0])]
        trace.notes += notes
    return trace
