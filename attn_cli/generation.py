"""Watching a model answer: generation that keeps every new token's attention.

    m = attn_cli.load_model("smollm2")
    t = m.generate("The capital of France is", max_new_tokens=20)
    t.generated            # the new tokens: ids, tokens, text
    t.attention().shape    # (layers, heads, n_new, n_prompt + n_new)

Row i of a map is the attention of the pass that wrote new token i: the query is the token
before it (the prompt's last token for i = 0), the keys every token so far; later columns are
0 (not yet written). These rows are exactly the rows of a full pass over prompt + answer at
those positions, and the rows transformers' generate(output_attentions=True) returns.

The prompt runs once; each new token then costs one row of attention per head with a key/value
cache (kvcache.KVCache), for the families whose `layers` offers `with_cache` (the Llama-style
decoders of models/_decoder.py, gpt-oss, GPT-2: its learned positions through its embed's `at`).
Without one (or with the cache off) generation re-runs the full pass over every token for each
new one: the same numbers, slower (a note says so).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli import memory
from attn_cli.blas import threads_for_free_cores
from attn_cli.errors import InputError, opt
from attn_cli.gguf import open_gguf
from attn_cli.kvcache import KVCache
from attn_cli.options import Selection
from attn_cli.readable import readable_tokens
from attn_cli.sampling import Sampler, softmax
from attn_cli.tokenizer import tokenize
from attn_cli.trace import MODEL, Axis, Trace, TraceStep, token_labels

# The most new tokens one call may ask for (each costs a pass; the maps grow with their square).
MAX_NEW_TOKENS = 8192
RUNNERS_UP = 3  # the other likeliest tokens shown beside each new one
ATTENDED = 3  # the tokens each new one attended to most, shown beside it
GENERATED = "generated"  # the trace axis of the new tokens (the maps' rows)


@dataclass(frozen=True)
class NewToken:
    """One token as it is generated: what the model wrote, how sure it was, where it looked."""

    index: int  # 0 for the first new token
    id: int
    token: str  # as shown (readable)
    text: str  # as decoded
    special: bool  # a special token (end of sequence, a chat marker …)
    probability: float  # the model's probability for it (softmax of the logits, temperature 1)
    runners_up: list[tuple[str, float]]  # the next likeliest tokens and their probabilities
    # The tokens the pass that wrote it attended to most (mean over the kept layers and heads),
    # the first token left out (most heads park attention there): (position, label, weight)
    attended: list[tuple[int, str, float]]


class CachedWeights:
    """A weight source whose tensors are read (and dequantised) once, then kept: every new
    token reads every weight, which must not mean decoding a GGUF file again each time."""

    def __init__(self, w: Any) -> None:
        self._w = w
        self._kept: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._kept.get(name)
        if a is None:
            a = self._kept[name] = self._w[name]
            release = getattr(self._w, "release_mapping", None)
            if release is not None:  # a GGUF file: its pages are not needed any more
                release()
        return a

    def __contains__(self, name: object) -> bool:
        return name in self._w

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._w.shape(name))

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        if name in self._kept:
            return self._kept[name][np.asarray(ids, dtype=np.int64)]
        return self._w.rows(name, ids)


@dataclass
class Generation:
    """A generation run, token by token: iterate it to get each NewToken as it is written;
    `trace()` then (or after an interruption) gives the Trace of what was generated."""

    model: Any
    prompt: str
    max_new_tokens: int = 32
    sampler: Sampler = field(default_factory=Sampler)
    stop: tuple[str, ...] = ()
    chat: bool = False
    layers: list[int] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    cache: bool = True  # False: a full pass per token (what the cache is checked against)
    prompt_ids: list[int] = field(default_factory=list)
    prompt_raw: list[str] = field(default_factory=list)
    rendered: str = ""  # the prompt as given to the tokenizer (in its chat template with chat)
    new_ids: list[int] = field(default_factory=list)
    new_tokens: list[NewToken] = field(default_factory=list)
    stopped: str = "not started"
    seconds: float = 0.0
    _rows: list[np.ndarray] = field(default_factory=list)  # per new token (L, H, n_keys)
    _shown: list[str] = field(default_factory=list)  # every token so far as shown (readable)
    _kind: str = "weights"

    @classmethod
    def start(
        cls,
        model: Any,
        prompt: str,
        max_new_tokens: Any = 32,
        temperature: Any = None,
        top_k: Any = None,
        top_p: Any = None,
        seed: Any = None,
        stop: Any = None,
        chat: bool = False,
        layers: Selection = "all",
        heads: Selection = "all",
        cache: bool = True,
    ) -> Generation:
        """Every option checked (one line naming a bad one) and the prompt tokenised."""
        if model.family.logits is None or not model.family.causal:
            raise InputError(
                f"{model.name} ({model.family.name}) does not predict next tokens: generation "
                "needs a decoder with an LM head"
            )
        if not isinstance(prompt, str) or not prompt:
            raise InputError(f"{opt('prompt')}: give the text to continue")
        if (
            not isinstance(max_new_tokens, int)
            or isinstance(max_new_tokens, bool)
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
        ):
            raise InputError(
                f"{opt('max_new_tokens', max_new_tokens)}: must be a whole number from 1 to "
                f"{MAX_NEW_TOKENS}"
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise InputError(f"{opt('stop', stop)}: must be non-empty text")
        sampler = Sampler.checked(temperature, top_k, top_p, seed)
        layer_list, head_list = model.select(layers, heads, ("layer", "head"))
        g = cls(model, prompt, max_new_tokens, sampler, stops, bool(chat), layer_list, head_list)
        g.cache = bool(cache)
        text = prompt
        if chat:
            from attn_cli.chat import chat_prompt

            text = chat_prompt(model, prompt)
        # A chat prompt carries its own special tokens; a plain one gets the tokenizer's (BOS).
        g.prompt_raw, g.prompt_ids = tokenize(model.tokenizer, text, special=not chat)
        g.rendered = text
        d = model.dims
        if max(g.prompt_ids) >= d.vocab:
            raise InputError(
                f"token id {max(g.prompt_ids)} is outside {model.name}'s vocabulary ({d.vocab})"
            )
        if d.max_positions is not None and len(g.prompt_ids) + max_new_tokens > d.max_positions:
            raise InputError(
                f"the prompt is {len(g.prompt_ids)} tokens; with {opt('max_new_tokens')} "
                f"{max_new_tokens} that is more than the {d.max_positions} positions "
                f"{model.name} has"
            )
        # What is kept: one row per new token for each chosen layer and head (and the trace's
        # copy of them), and the weights once dequantised to float32.
        total = len(g.prompt_ids) + max_new_tokens
        kept = 2 * len(layer_list) * len(head_list) * max_new_tokens * total * 4
        memory.check_fits(
            kept + 4 * model.weights.parameters(),
            f"{max_new_tokens:,} new tokens after {len(g.prompt_ids):,}, over "
            f"{len(layer_list)} layers of {len(head_list)} heads",
            f"choose fewer layers ({opt('layer')}), heads ({opt('head')}) or new tokens "
            f"({opt('max_new_tokens')})",
        )
        return g

    # ------------------------------------------------------------------ running

    @property
    def cached(self) -> bool:
        """Whether this run uses a key/value cache (the family offers one and it is on)."""
        return self.cache and hasattr(self.model.family.layers, "with_cache")

    def end_ids(self) -> set[int]:
        """The model's end-of-sequence tokens: config.json, generation_config.json, the GGUF's
        eos (and end-of-turn) tokens."""
        found: set[int] = set()
        m = self.model
        cfg = m.config
        sources = [cfg.get("eos_token_id"), cfg.get("gguf", {}).get("eos_token_id")]
        path = m.path
        gen = path / "generation_config.json" if path.is_dir() else None
        if gen is not None and gen.is_file():
            with contextlib.suppress(OSError, ValueError):
                sources.append(json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id"))
        if path.is_file():  # a GGUF: its weights carry the header already read
            meta = getattr(m.weights, "metadata", None) or open_gguf(path).metadata
            sources += [meta.get("tokenizer.ggml.eos_token_id")]
            sources += [meta.get("tokenizer.ggml.eot_token_id")]
        for s in sources:
            for v in s if isinstance(s, list) else [s]:
                if isinstance(v, int) and not isinstance(v, bool):
                    found.add(v)
        return found

    def __iter__(self) -> Iterator[NewToken]:
        m = self.model
        fam, cfg = m.family, m.config
        w = CachedWeights(m.weights)
        kv = KVCache(m.dims.layers) if self.cached else None
        rng = self.sampler.generator()
        ends = self.end_ids()
        started = time.perf_counter()
        self.stopped = "max_new_tokens"
        self._shown = readable_tokens(self.prompt_raw + self._raw(self.new_ids), m._token_style)
        with threads_for_free_cores():
            logits = self._pass(w, fam.embed(w, self.prompt_ids, cfg), kv)
            while True:
                token_id = self.sampler.choose(logits, rng)
                new = self._new_token(token_id, logits)
                self.new_ids.append(token_id)
                self.new_tokens.append(new)
                self._shown.append(new.token)
                self.seconds = time.perf_counter() - started
                yield new
                if token_id in ends:
                    self.stopped = "end of sequence"
                    break
                if self.stop and any(s in self.answer() for s in self.stop):
                    self.stopped = "stop"
                    break
                if len(self.new_ids) >= self.max_new_tokens:
                    break
                if kv is not None:
                    x = self._embed_new(w, token_id, kv.length)
                else:
                    x = fam.embed(w, self.prompt_ids + self.new_ids, cfg)
                logits = self._pass(w, x, kv)
        self.seconds = time.perf_counter() - started

    def run(self) -> Trace:
        for _ in self:
            pass
        return self.trace()

    def _embed_new(self, w: Any, token_id: int, position: int) -> np.ndarray:
        """A new token alone, at its position when the family's embedding depends on it."""
        fam, cfg = self.model.family, self.model.config
        at = getattr(fam.embed, "at", None)
        return fam.embed(w, [token_id], cfg) if at is None else at(w, [token_id], cfg, position)

    def _pass(self, w: Any, x: np.ndarray, kv: KVCache | None) -> np.ndarray:
        """The layers over x (new tokens with a cache, every token without); keeps the last
        row of each chosen layer's and head's map; the next token's logits."""
        fam, cfg = self.model.family, self.model.config
        passes = fam.layers(w, x, cfg) if kv is None else fam.layers.with_cache(w, x, cfg, kv)
        wanted = {layer: i for i, layer in enumerate(self.layers)}
        kept: np.ndarray | None = None
        h = x
        for i, layer in enumerate(passes):
            h = layer.out
            if i in wanted:
                rec = layer.attention
                self._kind = rec.map_kind
                row = rec.weights[self.heads, -1, :]  # [H_kept, n_keys]
                if kept is None:
                    kept = np.empty((len(self.layers), *row.shape), dtype=np.float32)
                kept[wanted[i]] = row
        assert kept is not None
        self._rows.append(kept)
        last = fam.final(w, h[-1:], cfg)
        assert fam.logits is not None
        return np.asarray(fam.logits(w, last, cfg)[0], dtype=np.float32)

    def _new_token(self, token_id: int, logits: np.ndarray) -> NewToken:
        m = self.model
        p = softmax(logits)
        best = np.argpartition(-p, RUNNERS_UP)[: RUNNERS_UP + 1]  # the likeliest, unordered
        order = best[np.argsort(-p[best], kind="stable")]
        others = [int(i) for i in order if i != token_id][:RUNNERS_UP]
        shown = readable_tokens(self._raw([token_id, *others]), m._token_style)
        row = self._rows[-1].mean(axis=(0, 1))  # where the pass that wrote it looked
        labels = token_labels(self._shown)  # of every token so far: the pass's keys
        top = np.argsort(-row[1:], kind="stable")[:ATTENDED] + 1
        piece = m.tokenizer.id_to_token(token_id) or ""
        return NewToken(
            index=len(self.new_ids),
            id=token_id,
            token=shown[0],
            text=str(m.tokenizer.decode([token_id], skip_special_tokens=False)),
            special=piece in m._token_style.special,
            probability=float(p[token_id]),
            runners_up=[(t, float(p[i])) for t, i in zip(shown[1:], others, strict=True)],
            attended=[(int(j), labels[j], float(row[j])) for j in top if j < len(row)],
        )

    def _raw(self, ids: list[int]) -> list[str]:
        return [self.model.tokenizer.id_to_token(i) or "" for i in ids]

    def answer(self) -> str:
        """The new tokens decoded as one text."""
        return str(self.model.tokenizer.decode(self.new_ids, skip_special_tokens=False))

    # ------------------------------------------------------------------ the trace

    def trace(self) -> Trace:
        """The trace of what was generated so far: every token, and for each kept layer and
        head a map of the new tokens (rows) over all tokens (columns)."""
        m, d = self.model, self.model.dims
        raw = self.prompt_raw + self._raw(self.new_ids)
        tokens = readable_tokens(raw, m._token_style)
        labels = token_labels(tokens)
        n_p, n_new = len(self.prompt_ids), len(self.new_ids)
        total = n_p + n_new
        config: dict[str, Any] = {
            "pipeline": MODEL,
            "model": m.name,
            "model_path": str(m.path),
            "model_type": m.config.get("model_type", m.family.name),
            "tokenizer": m.tokenizer_label,
            "special_tokens": True,
            "layers": d.layers,
            "heads": d.heads,
            "hidden": d.hidden,
            "d_k": d.head_dim,
            "layer": _selection(self.layers, d.layers),
            "head": _selection(self.heads, d.heads),
            "causal": True,
        }
        if d.kv_heads != d.heads:
            config["kv_heads"] = d.kv_heads
        if m.family.describe is not None:
            config["architecture"] = m.family.describe(m.config)
        s = self.sampler
        config["generation"] = {
            "prompt": self.prompt,
            "prompt_tokens": n_p,
            "new_tokens": n_new,
            "answer": self.answer(),
            "max_new_tokens": self.max_new_tokens,
            "sampling": "greedy" if s.greedy else "sampled",
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "seed": None if s.greedy else s.seed,
            "stop": list(self.stop),
            "chat": self.chat,
            "stopped": self.stopped,
            "kv_cache": self.cached,
            "seconds": round(self.seconds, 3),
            "tokens": [
                {
                    "id": t.id,
                    "token": t.token,
                    "probability": round(t.probability, 6),
                    "runners_up": [[c, round(q, 6)] for c, q in t.runners_up],
                }
                for t in self.new_tokens
            ],
        }
        trace = Trace(
            self.rendered + self.answer(),
            tokens,
            self.prompt_ids + self.new_ids,
            config,
            raw_tokens=raw if raw != tokens else None,
            axes={GENERATED: Axis(GENERATED, "text", tokens[n_p:])},
        )
        if not self.cached:
            trace.notes.append(
                f"{m.family.name} has no key/value cache here: each new token re-ran the full "
                "pass over every token (the same numbers, slower)"
            )
        if self.stopped == "interrupted":
            trace.notes.append(f"interrupted after {n_new} new tokens: kept what was generated")
        if n_new == 0:
            return trace
        maps = np.zeros((len(self.layers), len(self.heads), n_new, total), dtype=np.float32)
        for i, rows in enumerate(self._rows[:n_new]):
            maps[:, :, i, : rows.shape[-1]] = rows
        what = "weights over the real tokens" if self._kind == "partial_weights" else "weights"
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                trace.steps.append(
                    TraceStep(
                        "W",
                        "W[i] = softmax(Q_rot[i−1]·K_rotᵀ·scale) over the tokens so far",
                        f"Where layer {layer}, head {head} looked while the model wrote each new "
                        f"token: row i is the attention {what} of the pass that chose new token "
                        "i (its query is the token before it), over every token so far; later "
                        "columns are 0.",
                        maps[li, hi],
                        labels[n_p:],
                        labels,
                        self._kind,
                        layer,
                        head,
                        row_axis=GENERATED,
                        col_axis="tokens",
                    )
                )
        return trace


def _selection(chosen: list[int], count: int) -> Any:
    if len(chosen) == count:
        return "all"
    return chosen[0] if len(chosen) == 1 else chosen
