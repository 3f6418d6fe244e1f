"""Text -> Trace for a real checkpoint: every selected layer and head, named like --qkv's steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attn_cli.errors import InputError
from attn_cli.models import bert, gpt2
from attn_cli.models.checkpoint import Checkpoint, Weights, resolve
from attn_cli.trace import Trace, TraceStep, dim_labels, token_labels

ARCHITECTURES = {"bert": bert, "gpt2": gpt2}


@dataclass
class Selection:
    layer: int | None  # None = all
    head: int | None  # None = all

    def check(self, ckpt: Checkpoint) -> None:
        if self.layer is not None and not 0 <= self.layer < ckpt.layers:
            raise InputError(
                f"--layer {self.layer}: {ckpt.name} has {ckpt.layers} layers (0–{ckpt.layers - 1}) or 'all'"
            )
        if self.head is not None and not 0 <= self.head < ckpt.heads:
            raise InputError(
                f"--head {self.head}: {ckpt.name} has {ckpt.heads} heads (0–{ckpt.heads - 1}) or 'all'"
            )


def parse_index(value: str | None, flag: str) -> int | None | str:
    """'all' -> None; an integer -> itself; None -> 'default'."""
    if value is None:
        return "default"
    if value.lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{flag} takes a number or 'all', got {value!r}") from None


class Model:
    """A resolved, shape-checked checkpoint with its tokenizer, ready to trace texts."""

    def __init__(self, name: str) -> None:
        from attn_cli.tokenizer import load_tokenizer

        self.ckpt = resolve(name)
        self.arch = ARCHITECTURES[self.ckpt.model_type]
        self.weights = Weights(self.ckpt.path / "model.safetensors", self.arch.ANCHOR)
        try:
            self.arch.check_shapes(self.weights, self.ckpt.config)
        except KeyError as exc:
            raise InputError(f"{self.ckpt.name}: config.json lacks {exc}") from None
        self.tokenizer = load_tokenizer(self.ckpt.path / "tokenizer.json")

    def trace(self, text: str, sel: Selection) -> Trace:
        from attn_cli.tokenizer import tokenize

        ckpt, cfg, arch = self.ckpt, self.ckpt.config, self.arch
        tokens, ids = tokenize(self.tokenizer, text, special=True)
        if len(ids) > ckpt.max_positions:
            raise InputError(
                f"the text is {len(ids)} tokens but {ckpt.name} takes at most {ckpt.max_positions} "
                "(its position embeddings end there); shorten the text"
            )
        if max(ids) >= cfg["vocab_size"]:
            raise InputError(
                f"token id {max(ids)} is outside {ckpt.name}'s vocabulary ({cfg['vocab_size']})"
            )
        from attn_cli.pipeline import check_fits_in_memory

        kept = (ckpt.layers if sel.layer is None else 1) * (ckpt.heads if sel.head is None else 1)
        check_fits_in_memory(len(ids), 4 * kept + ckpt.heads * 3, itemsize=4)
        labels = token_labels(tokens)
        config = {
            "pipeline": "model",
            "model": ckpt.name,
            "model_path": str(ckpt.path),
            "model_type": ckpt.model_type,
            "tokenizer": str(ckpt.path / "tokenizer.json"),
            "special_tokens": True,
            "layers": ckpt.layers,
            "heads": ckpt.heads,
            "hidden": ckpt.hidden,
            "d_k": ckpt.hidden // ckpt.heads,
            "layer": "all" if sel.layer is None else sel.layer,
            "head": "all" if sel.head is None else sel.head,
            "causal": ckpt.model_type == "gpt2",
        }
        trace = Trace(text, tokens, ids, config)
        x = arch.embed(self.weights, ids, cfg)
        h = x
        for i, layer in enumerate(arch.layers(self.weights, x, cfg)):
            h = layer.out
            if sel.layer is None or sel.layer == i:
                trace.steps += layer_steps(layer, i, sel.head, labels, ckpt.model_type)
            if sel.layer is not None and i >= sel.layer:
                break  # nothing later is shown: don't compute it
        if sel.layer is None:
            out = arch.final(self.weights, h, cfg)
            trace.steps.append(
                TraceStep(
                    "H",
                    "final hidden states",
                    "The model's output: one vector per token after every layer"
                    + (" and the final LayerNorm." if ckpt.model_type == "gpt2" else "."),
                    out,
                    labels,
                    dim_labels(out.shape[1]),
                    "vectors",
                )
            )
        return trace


def layer_steps(layer, i: int, head: int | None, labels: list[str], kind: str) -> list[TraceStep]:
    a = layer.attn
    n, d = layer.x.shape
    d_k = a.Q[0].shape[1]
    pre = kind == "gpt2"
    steps = [
        TraceStep(
            "X",
            "ln_1(hidden states)" if pre else "hidden states",
            f"Layer {i}'s input: one {d}-number vector per token"
            + (
                " after the layer's first LayerNorm (GPT-2 normalises before attention)."
                if pre
                else (
                    " (the embeddings, after LayerNorm)."
                    if i == 0
                    else f" (layer {i - 1}'s output)."
                )
            ),
            layer.x,
            labels,
            dim_labels(d),
            "vectors",
            layer=i,
        )
    ]
    for h in range(len(a.heads)) if head is None else [head]:
        s = a.heads[h]
        qc, kc, vc = dim_labels(d_k, "q"), dim_labels(d_k, "k"), dim_labels(d_k, "v")
        steps += [
            TraceStep(
                "Q",
                "X·W_q + b_q",
                f"Queries of head {h}: what each token looks for, in {d_k} numbers.",
                a.Q[h],
                labels,
                qc,
                "vectors",
                i,
                h,
            ),
            TraceStep(
                "K",
                "X·W_k + b_k",
                f"Keys of head {h}: what each token offers to be matched against.",
                a.K[h],
                labels,
                kc,
                "vectors",
                i,
                h,
            ),
            TraceStep(
                "V",
                "X·W_v + b_v",
                f"Values of head {h}: what each token passes on when attended to.",
                a.V[h],
                labels,
                vc,
                "vectors",
                i,
                h,
            ),
            TraceStep(
                "W_raw",
                "Q·Kᵀ",
                "Query i · key j: how well what token i looks for matches what token j offers.",
                s.W_raw,
                labels,
                labels,
                "scores",
                i,
                h,
            ),
            TraceStep(
                "W_scaled",
                "W_raw/√d_k",
                f"Divided by √d_k = {np.sqrt(d_k):.3g} so the softmax does not saturate.",
                s.W_scaled,
                labels,
                labels,
                "scores",
                i,
                h,
            ),
        ]
        if s.W_masked is not None:
            steps.append(
                TraceStep(
                    "W_masked",
                    "W_scaled, −∞ above the diagonal",
                    "GPT-2 reads left to right: a token may not look at later tokens, so their scores are −∞.",
                    s.W_masked,
                    labels,
                    labels,
                    "scores",
                    i,
                    h,
                )
            )
        steps += [
            TraceStep(
                "W",
                f"softmax({'W_masked' if s.W_masked is not None else 'W_scaled'}) per row",
                "Attention weights: each row sums to 1 — where each token looks.",
                s.W,
                labels,
                labels,
                "weights",
                i,
                h,
            ),
            TraceStep(
                "Y",
                "W·V",
                f"Head {h}'s output: each token's weighted mix of the values.",
                s.Y,
                labels,
                vc,
                "vectors",
                i,
                h,
            ),
        ]
    return steps


def explain_model(texts, name: str, sel: Selection) -> list[Trace]:
    model = Model(name)
    sel.check(model.ckpt)
    return [model.trace(t, sel) for t in texts]
