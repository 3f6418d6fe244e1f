"""The tokenizer stored in a GGUF file's metadata, rebuilt with HF ``tokenizers`` so that it
gives the same ids as llama.cpp (src/llama-vocab.cpp).

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE with the file's vocabulary and merges.
  The text is first split by the regular expressions llama.cpp uses for the pre-tokenizer
  named in ``tokenizer.ggml.pre`` (each one splits the pieces of the previous one, keeping
  matches and the text between them), then mapped to GPT-2's byte alphabet. Pre-tokenizers
  marked ``ignore_merges`` in llama.cpp (llama3, tekken, ...) take a whole piece that is a
  token as that token.
- ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE. llama.cpp replaces spaces
  with U+2581, prefixes one after the start and after every special token (when
  ``add_space_prefix``), then repeatedly merges the adjacent pair whose concatenation is the
  highest-scoring token; characters that form no token fall back to <0xXX> byte tokens. Here:
  a Prepend+Replace normaliser (applied to each piece between special tokens, like llama.cpp)
  and a BPE whose merges are every split of a token into two tokens, ranked by the score of
  the merged token.
- Tokens of type CONTROL, USER_DEFINED and UNKNOWN are added tokens (matched in the raw
  text); CONTROL and UNKNOWN are special. llama.cpp's ``tokenize(..., special=False)``
  matches only USER_DEFINED ones: set ``tokenizer.encode_special_tokens = True`` for that.
- BOS / EOS are added by a TemplateProcessing post-processor exactly when
  ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say (llama.cpp's defaults otherwise:
  BOS for SentencePiece and llama3-style vocabularies).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.gguf.header import show

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAX_PIECE = 512
# llama_token_type (gguf tokenizer.ggml.token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SEED_CODER = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]

# tokenizer.ggml.pre -> (regular expressions in order, ignore_merges, llama.cpp's add_bos default)
_PRE: dict[str, tuple[list[str], bool, bool]] = {}


def _pre(names: str, regexes: list[str], ignore_merges: bool = False, bos: bool = False) -> None:
    for n in names.split():
        _PRE[n] = (regexes, ignore_merges, bos)


_pre("default", _DEFAULT)
_pre("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2", [_LLAMA3], True, True)
_pre("dbrx smaug-bpe chatglm-bpe", [_LLAMA3])
_pre("falcon", [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"])
_pre(
    "starcoder refact command-r smollm codeshell exaone minerva-7b mellum2",
    [r"\p{N}", _GPT2],
)
_pre("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum", [_GPT2])
_pre("mpt olmo jais trillion granite-docling exaone4 modern-bert", [_GPT2])
_pre("qwen2 deepseek-r1-qwen kormo f2llmv2 megrez stablelm2 hunyuan solar-open", [_QWEN2])
_pre("qwen35", [_QWEN35])
_pre("poro-chat bloom gpt3-finnish", [_BLOOM])
_pre("viking", [_BLOOM, r"\p{N}"])
_pre("tekken", [_TEKKEN], True, True)
_pre("gpt-4o llama4 kanana2 talkie minimax-m2", [_GPT4O])
_pre("seed-coder", [_SEED_CODER])
_pre("grok-2", [_QWEN2])

# Texts llama.cpp always treats as control tokens (end-of-generation / FIM detection).
_AUTO_CONTROL_EOG = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
}  # fmt: skip
# ... and these when the matching tokenizer.ggml.<key> is not in the metadata.
_AUTO_CONTROL_IF_UNSET = {
    "eot_token_id": {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
                     "<end_of_utterance>"},
    "eom_token_id": {"<|eom_id|>"},
    "fim_pre_token_id": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>",
                         "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"},
    "fim_suf_token_id": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>",
                         "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"},
    "fim_mid_token_id": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>",
                         "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"},
    "fim_pad_token_id": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "fim_rep_token_id": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "fim_sep_token_id": {"<|file_sep|>"},
}  # fmt: skip


def _strings(meta: dict[str, Any], key: str, fname: str) -> list[str]:
    v = meta.get(key)
    if isinstance(v, np.ndarray) and v.size == 0:
        return []  # an empty array is written with a numeric item type
    # the header parser gives string arrays as lists of str, nested arrays as lists of lists
    if not isinstance(v, list) or (v and not isinstance(v[0], str)):
        raise InputError(f"{fname}: metadata {key} is missing or not a list of strings")
    return v


def _token_types(meta: dict[str, Any], n: int, fname: str) -> np.ndarray:
    v = meta.get("tokenizer.ggml.token_type")
    if v is None:
        return np.full(n, NORMAL, dtype=np.int64)
    if not isinstance(v, np.ndarray) or v.shape[0] < n:
        raise InputError(f"{fname}: tokenizer.ggml.token_type does not cover the vocabulary")
    return v[:n].astype(np.int64)


def _special_id(meta: dict[str, Any], key: str, n: int) -> int | None:
    v = meta.get(f"tokenizer.ggml.{key}")
    if isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= int(v) < n:
        return int(v)
    return None


def build_tokenizer(
    meta: dict[str, Any], fname: str = "model.gguf", source: Path | None = None
) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equal to llama.cpp's for this file. Raises InputError.
    ``source``: the GGUF file the metadata came from; a SentencePiece vocabulary's merges are
    then cached for it (MergesCache)."""
    try:
        return _build(meta, fname, source)
    except InputError:
        raise
    except Exception as exc:  # tokenizers rejects what a hostile file can put in a vocabulary
        raise InputError(f"{fname}: cannot build the tokenizer ({show(str(exc), 120)})") from None


def _build(meta: dict[str, Any], fname: str, source: Path | None) -> Tokenizer:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    kind = meta.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise InputError(
            f"{fname}: tokenizer model {show(str(kind))} is not supported (gpt2 and llama are)"
        )
    tokens = _strings(meta, "tokenizer.ggml.tokens", fname)
    n = len(tokens)
    if n == 0:
        raise InputError(f"{fname}: the vocabulary is empty")
    if "" in tokens:
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    types = _token_types(meta, n, fname)
    vocab = dict(zip(tokens, range(n), strict=True))  # a repeated text keeps its last id

    # token attributes as llama.cpp derives them (it looks texts up in the same map)
    control = types == CONTROL
    user = types == USER_DEFINED
    unknown = types == UNKNOWN
    auto = set(_AUTO_CONTROL_EOG)
    for key, texts in _AUTO_CONTROL_IF_UNSET.items():
        if f"tokenizer.ggml.{key}" not in meta:
            auto |= texts
    for t in auto:
        if t in vocab:
            control[vocab[t]] = True
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
        if t in vocab:
            control[vocab[t]], user[vocab[t]] = False, True

    bos_id = _special_id(meta, "bos_token_id", n)
    eos_id = _special_id(meta, "eos_token_id", n)
    unk_id = _special_id(meta, "unknown_token_id", n)
    pre = meta.get("tokenizer.ggml.pre")

    if kind == "gpt2":
        pre_name = "default" if not pre else str(pre)
        if pre_name not in _PRE:
            raise InputError(
                f"{fname}: pre-tokenizer {show(pre_name)} (tokenizer.ggml.pre) is not supported"
            )
        regexes, ignore_merges, add_bos_default = _PRE[pre_name]
        # "a b" -> (a, b), a merge of two tokens into a token (BPE refuses anything else);
        # comprehensions, not a loop: 49k merges take half the time
        merge_texts = _strings(meta, "tokenizer.ggml.merges", fname)
        split = [(m[:p], m[p + 1 :]) for m in merge_texts if (p := m.find(" ", 1)) > 0]
        merges = [(a, b) for a, b in split if a in vocab and b in vocab and a + b in vocab]
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = decoders.ByteLevel()
        add_bos_default_v = add_bos_default
    else:
        scores_v = meta.get("tokenizer.ggml.scores")
        if isinstance(scores_v, np.ndarray) and scores_v.shape[0] >= n:
            scores = scores_v[:n].astype(np.float64)
        else:
            scores = np.zeros(n)
        unk = tokens[unk_id] if unk_id is not None else None
        cache = MergesCache(source, tokens, scores, types) if source is not None else None
        cached = cache.load(len(tokens)) if cache is not None else None
        model = None
        if cached is not None:
            try:  # BPE refuses a merge whose halves or whole are not tokens: checked again
                model = models.BPE(
                    vocab=vocab,
                    merges=[(tokens[a], tokens[b]) for a, b in cached],
                    unk_token=unk,
                    fuse_unk=True,
                    byte_fallback=True,
                )
            except Exception:
                model = None
        if model is None:
            pairs = _spm_merges(tokens, scores, types, vocab)
            model = models.BPE(
                vocab=vocab,
                merges=[(tokens[a], tokens[b]) for a, b in pairs],
                unk_token=unk,
                fuse_unk=True,
                byte_fallback=True,
            )
            if cache is not None:
                cache.store(pairs)
        tok = Tokenizer(model)
        add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        steps = [normalizers.Prepend("▁")] if add_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
        decs = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix:
            decs.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(decs)
        add_bos_default_v = True

    # added tokens: CONTROL / UNKNOWN special, USER_DEFINED plain; llama.cpp strips around
    # Phi-3's special tokens by the model name.
    name = str(meta.get("general.name") or "").lower()
    phi3 = "phi-3" in name or "phi3" in name
    added: list[AddedToken] = []
    for i in np.flatnonzero(control | user | unknown).tolist():
        t = tokens[i]
        rstrip = phi3 and t not in ("<unk>", "<s>", "<|endoftext|>")
        special = not (user[i] and not control[i])
        added.append(AddedToken(t, special=special, normalized=False, rstrip=rstrip))
    if phi3 and "</s>" in vocab and not (control | user | unknown)[vocab["</s>"]]:
        added.append(AddedToken("</s>", special=False, normalized=False, rstrip=True))
    if added:
        tok.add_special_tokens([at for at in added if at.special])
        tok.add_tokens([at for at in added if not at.special])
    for at in added:
        got = tok.token_to_id(at.content)
        if got is None or tokens[got] != at.content:
            raise InputError(f"{fname}: cannot place token {show(at.content)} in the vocabulary")

    add_bos = meta.get("tokenizer.ggml.add_bos_token", add_bos_default_v)
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False)
    single: list[str] = []
    specials: list[tuple[str, int]] = []
    if add_bos and bos_id is not None:
        single.append(f"{tokens[bos_id]}:0")
        specials.append((tokens[bos_id], bos_id))
    single.append("$A:0")
    if add_eos and eos_id is not None:
        single.append(f"{tokens[eos_id]}:0")
        if eos_id != bos_id:
            specials.append((tokens[eos_id], eos_id))
    if specials:
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(single),
            pair=" ".join(single + [s.replace("$A", "$B").replace(":0", ":1") for s in single]),
            special_tokens=specials,
        )
    return tok


def _spm_merges(
    tokens: list[str], scores: np.ndarray, types: np.ndarray, vocab: dict[str, int]
) -> list[tuple[int, int]]:
    """Every split of a token into two tokens, as the ids of the two, best-scoring merged token
    first (ties: lower merged id, then lower left id). Python lists and plain tuples rather than
    numpy scalars and a key function: 262,144 pieces take a third of the time."""
    found: list[tuple[float, int, int, int]] = []
    add, get = found.append, vocab.get
    negative = (-scores.astype(np.float64)).tolist()
    skip = (types == BYTE).tolist()
    for i, t in enumerate(tokens):
        # pieces longer than MAX_PIECE are never merged (real ones are < 100 characters; a
        # hostile megabyte-long token would make this loop quadratic)
        if not 2 <= len(t) <= MAX_PIECE or skip[i] or get(t) != i:
            continue
        for k in range(1, len(t)):
            a = get(t[:k])
            if a is not None:
                b = get(t[k:])
                if b is not None:
                    add((negative[i], i, a, b))
    found.sort()  # (score, merged id, left id): a left id is unique within one merged token
    return [(a, b) for _, _, a, b in found]


class MergesCache:
    """The merges of a SentencePiece vocabulary, computed once per file: deriving them takes
    seconds for Gemma's 262,144 pieces, reading them back a few milliseconds.

    Kept under the user's cache directory ($XDG_CACHE_HOME or ~/.cache, then attn-cli/gguf-merges)
    as int32 id pairs after a one-line JSON header. The key is the file's identity (resolved
    path, size, mtime_ns) and a SHA-256 of what the merges are derived from (pieces, scores,
    types, this code's version); the header also holds the data's SHA-256. A file that is
    missing, unreadable, for another key, corrupt or out of range is ignored and rewritten;
    models.BPE then checks again that every merge joins two tokens into a token. Written to a
    temporary file and renamed, so a reader never sees half a file; an unwritable cache
    directory only costs the time."""

    VERSION = 1
    MAGIC = b"attn-cli gguf merges\n"

    def __init__(
        self, source: Path, tokens: list[str], scores: np.ndarray, types: np.ndarray
    ) -> None:
        digest = hashlib.sha256(f"{self.VERSION} {MAX_PIECE} {len(tokens)}\n".encode())
        digest.update("\0".join(tokens).encode("utf-8", "surrogatepass"))
        digest.update(np.ascontiguousarray(scores, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(types, dtype="<i8").tobytes())
        self.key = ""
        try:
            st = source.stat()
            self.key = json.dumps(
                [str(source.resolve()), st.st_size, st.st_mtime_ns, digest.hexdigest()]
            )
        except OSError:
            return
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        name = hashlib.sha256(self.key.encode()).hexdigest()[:32]
        self.path = Path(base) / "attn-cli" / "gguf-merges" / f"{name}.bin"

    def load(self, n_tokens: int) -> list[list[int]] | None:
        if not self.key:
            return None
        try:
            with open(self.path, "rb") as f:
                if f.read(len(self.MAGIC)) != self.MAGIC:
                    return None
                header = json.loads(f.readline(4096))
                data = f.read()
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict) or header.get("key") != self.key:
            return None
        count = header.get("count")
        if not isinstance(count, int) or count < 0 or len(data) != count * 8:
            return None
        if hashlib.sha256(data).hexdigest() != header.get("sha256"):
            return None
        ids = np.frombuffer(data, dtype="<i4").reshape(count, 2)
        if count and (ids.min() < 0 or ids.max() >= n_tokens):
            return None
        return ids.tolist()

    def store(self, pairs: Sequence[Sequence[int]]) -> None:
        if not self.key:
            return
        data = np.asarray(pairs, dtype="<i4").reshape(-1, 2).tobytes()
        header = {"key": self.key, "count": len(pairs), "sha256": hashlib.sha256(data).hexdigest()}
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".merges.", suffix=".tmp", dir=self.path.parent)
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                f.write(self.MAGIC + json.dumps(header).encode() + b"\n" + data)
            os.replace(tmp, self.path)
            tmp = None
        except OSError:
            pass  # a read-only or full cache directory: the next run derives the merges again
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
