"""Text -> Trace: tokenize, embed, run the attention steps, and describe each one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attn_cli import attention as att
from attn_cli.embeddings import BUNDLED, embed
from attn_cli.errors import InputError
from attn_cli.projections import Projections, load_projections, seeded_projections
from attn_cli.tokenizer import load_tokenizer, tokenize, tokenizer_name
from attn_cli.trace import Trace, TraceStep, dim_labels, token_labels


@dataclass
class ExplainOptions:
    tokenizer: str | None = None
    special: bool = False
    embeddings: str = BUNDLED
    dim: int | None = None
    seed: int = 0
    scale: bool = False
    # The parametric (Q/K/V) pipeline:
    qkv: bool = False
    heads: int = 1
    d_k: int | None = None
    causal: bool = False
    temperature: float = 1.0
    weights: str | None = None
    # A real checkpoint:
    model: str | None = None
    layer: str | None = None  # "N", "all", or None (the default for the output)
    head: str | None = None
    all_by_default: bool = False  # unset --layer/--head mean "all" (for --json exports)

    def check(self) -> None:
        """Options that cannot go together are errors, never silent overrides."""
        if self.model is not None:
            own = [
                flag
                for flag, on in (
                    ("--qkv", self.qkv),
                    ("--weights", self.weights is not None),
                    ("--embeddings", self.embeddings != BUNDLED),
                    ("--dim", self.dim is not None),
                    ("--tokenizer", self.tokenizer is not None),
                    ("--scale", self.scale),
                    ("--heads", self.heads != 1),
                    ("--d-k", self.d_k is not None),
                    ("--causal", self.causal),
                    ("--temperature", self.temperature != 1.0),
                )
                if on
            ]
            if own:
                raise InputError(
                    f"{own[0]} does not apply with --model: a checkpoint brings its own "
                    "tokenizer, embeddings, projections and mask"
                )
            return
        if self.layer is not None or self.head is not None:
            raise InputError(
                f"{'--layer' if self.layer is not None else '--head'} applies to --model"
            )
        if not self.qkv:
            given = [
                flag
                for flag, on in (
                    ("--heads", self.heads != 1),
                    ("--d-k", self.d_k is not None),
                    ("--causal", self.causal),
                    ("--temperature", self.temperature != 1.0),
                    ("--weights", self.weights is not None),
                )
                if on
            ]
            if given:
                raise InputError(f"{given[0]} applies to the Q/K/V pipeline: add --qkv")
        elif self.scale:
            raise InputError("--qkv always scales by √d_k (the W_scaled step): drop --scale")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"--temperature must be a positive number, got {self.temperature:g}")


def explain_texts(texts: Iterable[str], opts: ExplainOptions) -> Iterator[Trace]:
    """One trace per text, sharing one tokenizer (and one set of projection weights)."""
    opts.check()
    if opts.model is not None:
        yield from _model_traces(texts, opts)
        return
    tok = load_tokenizer(opts.tokenizer)
    projections: dict[int, Projections] = {}
    for text in texts:
        tokens, ids = tokenize(tok, text, opts.special)
        check_fits_in_memory(len(ids), 4 * opts.heads + 2 if opts.qkv else 4)
        emb = embed(tokens, ids, opts.embeddings, opts.dim, opts.seed)
        config = {
            "pipeline": "qkv" if opts.qkv else "toy",
            "tokenizer": tokenizer_name(opts.tokenizer),
            "special_tokens": opts.special,
            **emb.config,
        }
        trace = Trace(text=text, tokens=tokens, token_ids=ids, config=config, notes=list(emb.notes))
        labels = token_labels(tokens)
        if not opts.qkv:
            config["scale"] = opts.scale
            with np.errstate(over="ignore", invalid="ignore"):
                trace.steps = toy_steps(emb.X, labels, opts.scale)
        else:
            d = emb.X.shape[1]
            if d not in projections:
                projections[d] = _projections(opts, d)
            proj = projections[d]
            config.update(
                {
                    "heads": proj.heads,
                    "d_k": proj.d_k,
                    "d_v": proj.d_v,
                    "causal": opts.causal,
                    "temperature": opts.temperature,
                }
            )
            config.update(proj.config)
            if opts.weights is None:
                config["seed"] = opts.seed  # the projections' seed, even with other embeddings
            trace.notes += proj.notes
            with np.errstate(over="ignore", invalid="ignore"):
                trace.steps = qkv_steps(emb.X, labels, proj, opts.causal, opts.temperature)
        check_finite(trace)
        yield trace


def _model_traces(texts: Iterable[str], opts: ExplainOptions) -> Iterator[Trace]:
    from attn_cli.models.run import Model, Selection, parse_index

    model = Model(opts.model)
    layer, head = parse_index(opts.layer, "--layer"), parse_index(opts.head, "--head")
    ckpt = model.ckpt
    default_layer = None if opts.all_by_default else ckpt.layers // 2
    sel = Selection(
        default_layer if layer == "default" else layer,
        (None if opts.all_by_default else 0) if head == "default" else head,
    )
    sel.check(ckpt)
    for text in texts:
        trace = model.trace(text, sel)
        if "default" in (layer, head) and not opts.all_by_default:
            trace.notes.append(
                f"showing layer {sel.layer if sel.layer is not None else 'all'}, head "
                f"{sel.head if sel.head is not None else 'all'} of {ckpt.layers} layers × {ckpt.heads} "
                "heads: choose with --layer N|all and --head N|all"
            )
        yield trace


def check_finite(trace: Trace) -> None:
    """Huge vectors can overflow float64 in X·Xᵀ; say so rather than show inf or NaN. Masked
    cells (-inf in W_masked) are the only non-finite numbers a trace may hold."""
    for step in trace.steps:
        data = step.data
        bad = np.isnan(data) | np.isposinf(data)
        if step.name != "W_masked":
            bad |= np.isneginf(data)
        if bad.any():
            raise InputError(
                f"the scores overflowed ({step.name} holds ±inf): the vectors are too large; scale them down"
            )


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(n: int, matrices: int, itemsize: int = 8) -> None:
    """Not an arbitrary cap: refuse only what this machine cannot hold. The toy pipeline keeps
    about `matrices` n × n arrays alive at once (scores, weights, softmax temporaries)."""
    need, have = n * n * itemsize * matrices, physical_memory()
    if have is not None and need > 0.8 * have:
        raise InputError(
            f"the text is {n:,} tokens: its n × n attention matrices need about {need / 2**30:.0f} GiB, "
            f"more than this machine's {have / 2**30:.0f} GiB; use a shorter text"
        )


def _projections(opts: ExplainOptions, d: int) -> Projections:
    if opts.weights is not None:
        return load_projections(Path(opts.weights).expanduser(), d, opts.heads, opts.d_k)
    return seeded_projections(d, opts.heads, opts.d_k, opts.seed)


def toy_steps(X: np.ndarray, labels: list[str], scale: bool) -> list[TraceStep]:
    """Seed 001's pipeline as described trace steps: X, W_raw, (W_scaled), W, Y."""
    n, d = X.shape
    s = att.toy_self_attention(X, scale=scale)
    dims = dim_labels(d)
    steps = [
        TraceStep(
            "X",
            "embed(tokens)",
            f"Each of the {n} tokens becomes a row vector of {d} numbers; so far every vector "
            "is independent of the others.",
            X,
            labels,
            dims,
            "vectors",
        ),
        TraceStep(
            "W_raw",
            "X·Xᵀ",
            "Cell (i, j) is the dot product of token i and token j: large when they point the "
            "same way. Not normalised: values can exceed 1, and the matrix is symmetric.",
            s.W_raw,
            labels,
            labels,
            "scores",
        ),
    ]
    if s.W_scaled is not None:
        steps.append(
            TraceStep(
                "W_scaled",
                "W_raw/√d",
                f"Divided by √d = {np.sqrt(d):.3g}: dot products grow with the dimension, and large "
                "scores would push the softmax into saturation (one weight near 1, the rest near 0).",
                s.W_scaled,
                labels,
                labels,
                "scores",
            )
        )
    steps += [
        TraceStep(
            "W",
            "softmax(W_scaled) per row" if scale else "softmax(W_raw) per row",
            "Each row is normalised with a softmax (row max subtracted first, for stability): "
            "all weights are now between 0 and 1 and every row sums to 1 — how much each token "
            "attends to every token.",
            s.W,
            labels,
            labels,
            "weights",
        ),
        TraceStep(
            "Y",
            "W·X",
            "Each output row is a weighted mix of all token vectors, weighted by that token's row "
            "of W: every token now carries context from the others. (The seed writes Y = Xᵀ·W with "
            "tokens as columns; with tokens as rows it is Y = W·X.)",
            s.Y,
            labels,
            dims,
            "vectors",
        ),
    ]
    return steps


def _superscript(h: int) -> str:
    return f"⁽{h}⁾".translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def qkv_steps(
    X: np.ndarray, labels: list[str], p: Projections, causal: bool, temperature: float
) -> list[TraceStep]:
    """Seed 000's learnable self-attention as described trace steps, head by head."""
    n, d = X.shape
    H = p.heads
    mask = att.causal_mask(n) if causal else None
    m = att.multi_head_attention(
        X, p.W_q, p.W_k, p.W_v, H, p.b_q, p.b_k, p.b_v, p.W_o, p.b_o, mask, temperature
    )
    dims = dim_labels(d)
    steps = [
        TraceStep(
            "X",
            "embed(tokens)",
            f"Each of the {n} tokens becomes a row vector of {d} numbers: the input to the learned "
            "projections.",
            X,
            labels,
            dims,
            "vectors",
        )
    ]
    w_heads = [att.split_heads(w, H) for w in (p.W_q, p.W_k, p.W_v)]
    t = _fmt(temperature)
    for h in range(H):
        head = h if H > 1 else None
        of = f" of head {h}" if H > 1 else ""
        sup = _superscript(h) if H > 1 else ""
        a = m.heads[h]
        qc, kc, vc = (dim_labels(p.d_k, "q"), dim_labels(p.d_k, "k"), dim_labels(p.d_v, "v"))
        role = {
            "q": "its query: what the token is looking for",
            "k": "its key: what the token offers to be matched against",
            "v": "its value: what the token passes on when it is attended to",
        }
        for letter, w, cols in (
            ("q", w_heads[0][h], qc),
            ("k", w_heads[1][h], kc),
            ("v", w_heads[2][h], vc),
        ):
            steps.append(
                TraceStep(
                    f"W_{letter}",
                    f"learned {d}×{w.shape[1]} matrix{sup}",
                    f"The learned {letter.upper()} projection{of}: a token's vector times this matrix "
                    f"gives {role[letter]}.",
                    w,
                    dims,
                    cols,
                    "parameters",
                    head=head,
                )
            )
        for letter, mat, cols, bias in (
            ("Q", m.Q[h], qc, p.b_q),
            ("K", m.K[h], kc, p.b_k),
            ("V", m.V[h], vc, p.b_v),
        ):
            lo = letter.lower()
            steps.append(
                TraceStep(
                    letter,
                    f"X·W_{lo}{sup}" + (f" + b_{lo}" if bias is not None else ""),
                    f"{ {'Q': 'Queries', 'K': 'Keys', 'V': 'Values'}[letter] }{of}: one row per token, "
                    f"each token's vector sent through the learned W_{lo} into {p.d_k if letter != 'V' else p.d_v} numbers.",
                    mat,
                    labels,
                    cols,
                    "vectors",
                    head=head,
                )
            )
        steps.append(
            TraceStep(
                "W_raw",
                "Q·Kᵀ",
                "Query i · key j: how well what token i looks for matches what token j offers. Unlike "
                "X·Xᵀ it need not be symmetric, because queries and keys come from different maps.",
                a.W_raw,
                labels,
                labels,
                "scores",
                head=head,
            )
        )
        steps.append(
            TraceStep(
                "W_scaled",
                "W_raw/√d_k",
                f"Divided by √d_k = {_fmt(np.sqrt(p.d_k))}: dot products grow with d_k, and large scores "
                "would push the softmax into saturation (one weight near 1, tiny gradients for the rest).",
                a.W_scaled,
                labels,
                labels,
                "scores",
                head=head,
            )
        )
        if a.W_masked is not None:
            steps.append(
                TraceStep(
                    "W_masked",
                    "W_scaled, −∞ above the diagonal",
                    "Causal mask: a token may not look at later tokens, so every future position is set "
                    "to −∞ before the softmax and gets a weight of exactly 0.",
                    a.W_masked,
                    labels,
                    labels,
                    "scores",
                    head=head,
                )
            )
        logits = "W_masked" if a.W_masked is not None else "W_scaled"
        if temperature == 1.0:
            formula, temp_note = f"softmax({logits}) per row", ""
        else:
            formula = f"softmax({logits}/{t}) per row"
            temp_note = (
                f" Temperature T = {t} < 1 sharpens each row towards its best match."
                if temperature < 1
                else f" Temperature T = {t} > 1 flattens each row towards uniform."
            )
        steps.append(
            TraceStep(
                "W",
                formula,
                "Each row is now a probability distribution (weights between 0 and 1, summing to 1) "
                "over the tokens this token may attend to." + temp_note,
                a.W,
                labels,
                labels,
                "weights",
                head=head,
            )
        )
        steps.append(
            TraceStep(
                "Y",
                "W·V",
                f"Each token's output{of} is the weighted sum of the value vectors, weighted by its row of W.",
                a.Y,
                labels,
                vc,
                "vectors",
                head=head,
            )
        )
    if H > 1:
        concat_cols = [f"h{h}.v{j}" for h in range(H) for j in range(p.d_v)]
        steps.append(
            TraceStep(
                "Y_concat",
                f"[Y{_superscript(0)} … Y{_superscript(H - 1)}]",
                f"The {H} heads' outputs side by side. Each head attended with its own learned W_q, W_k "
                "and W_v, so each can pick up a different relation between the tokens.",
                m.Y_concat,
                labels,
                concat_cols,
                "vectors",
            )
        )
    if m.O is not None:
        out_cols = dim_labels(p.W_o.shape[1])
        steps.append(
            TraceStep(
                "W_o",
                f"learned, {p.W_o.shape[0]}×{p.W_o.shape[1]}",
                "The output projection: mixes what the heads found back into one vector per token.",
                p.W_o,
                concat_cols if H > 1 else dim_labels(p.d_v, "v"),
                out_cols,
                "parameters",
            )
        )
        steps.append(
            TraceStep(
                "O",
                ("Y_concat·W_o" if H > 1 else "Y·W_o") + (" + b_o" if p.b_o is not None else ""),
                "The layer's output: one vector per token, combining every head's view of its context.",
                m.O,
                labels,
                out_cols,
                "vectors",
            )
        )
    return steps
