"""Text -> tokens with HuggingFace `tokenizers`, never padded, never silently truncated."""

from __future__ import annotations

import contextlib
import json  # not orjson: the libraries imported at start-up have loaded json already
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.errors import InputError, opt

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_TOKENIZER = DATA_DIR / "tokenizer.json"
# The bundled vocabulary sorted by its UTF-8 bytes, with each entry's id: a binary-searchable
# copy of tokenizer.json's model.vocab, written by scripts/build_data.py.
BUNDLED_VOCAB_INDEX = DATA_DIR / "tokenizer_vocab_index.npy"
BUNDLED_NAME = "minilm-l6 (bundled bert-base-uncased WordPiece)"


def resolve_tokenizer_path(path: str | Path | None) -> Path:
    if path is None:
        return BUNDLED_TOKENIZER
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise InputError(f"{opt('tokenizer')}: no tokenizer.json in directory {path}")
    elif not p.is_file():
        raise InputError(f"{opt('tokenizer')}: {path} does not exist")
    return p


def load_tokenizer(path: str | Path | None = None) -> Any:
    """Load a tokenizer.json (the bundled one by default) with padding and truncation off."""
    if path is None:
        return BundledTokenizer()
    return _tokenizer_from_file(resolve_tokenizer_path(path))


def encode(tok: Any, text: str, pair: str | None = None, add_special_tokens: bool = True) -> Any:
    """`tok.encode`, where a panic inside the tokenizers library (a catastrophic regex in a
    tokenizer.json, a template naming a special token it lacks) is one InputError: a Rust
    panic arrives as pyo3's PanicException, a BaseException that nothing else catches."""
    try:
        with _panic_report_dropped():
            return tok.encode(text, pair, add_special_tokens=add_special_tokens)
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        reason = (str(exc).splitlines() or [""])[0][:120] or "a panic"
        raise InputError(
            f"the tokenizer failed on this text ({reason}): is its file damaged?"
        ) from None


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


_CAPTURE: list[Any] = []  # one reusable temp file per process
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def _panic_report_dropped() -> Iterator[None]:
    """Rust's panic hook writes its report (with RUST_BACKTRACE set, a backtrace) to the
    stderr descriptor itself. While tokenizers runs, that descriptor points at a temp file,
    and what lands there is written on afterwards unless the call panicked: the report is
    dropped, and a progress bar drawing meanwhile loses no frame."""
    with _CAPTURE_LOCK:
        if not _CAPTURE:
            _CAPTURE.append(tempfile.TemporaryFile())  # noqa: SIM115 (open for the process)
        capture = _CAPTURE[0].fileno()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture, 2)
        panicked = False
        try:
            yield
        except BaseException as exc:
            panicked = _is_panic(exc)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            written = os.lseek(capture, 0, os.SEEK_CUR)
            if written:
                os.lseek(capture, 0, os.SEEK_SET)
                data = os.read(capture, written)
                os.lseek(capture, 0, os.SEEK_SET)
                os.ftruncate(capture, 0)
                while data and not panicked:
                    data = data[os.write(2, data) :]


def _tokenizer_from_file(p: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(p))
    except BaseException as exc:  # a bare Exception with a serde message, or a Rust panic
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p} is not a valid tokenizer.json ({reason[:120]})") from None
    return _configured(tok)


class BundledTokenizer:
    """The bundled WordPiece tokenizer, built for each text from only the vocabulary entries
    that text can reach.

    `tokenizers` takes 15–30 ms to build a WordPiece model of all 30,522 entries: most of a short
    run's own time. WordPiece looks up nothing but pieces of the text's own words (a word's
    prefixes, and the continuing prefix "##" + a later substring), so a tokenizer holding the
    entries among those pieces — found by binary search in a sorted copy of the vocabulary —
    gives the same tokens and ids (tests/test_tokenizer.py checks this against the full
    tokenizer). The normalizer, pre-tokenizer, special tokens and post-processor are the
    library's, read from the same tokenizer.json. Once the pieces looked up add up to the size
    of the vocabulary (many or long texts), the full tokenizer is built once and used from then
    on."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        self._head = _configuration_head(BUNDLED_TOKENIZER)
        config = json.loads(self._head + "{}}}")
        model = config["model"]
        self._prefix: str = model["continuing_subword_prefix"]
        self._max_chars: int = model["max_input_chars_per_word"]
        self._added = {t["content"]: t["id"] for t in config["added_tokens"]}
        self._index = np.load(BUNDLED_VOCAB_INDEX)
        # No entry is longer, in characters, than its UTF-8 bytes.
        self._longest = self._index.dtype["token"].itemsize
        self._words = Tokenizer.from_str(self._head + json.dumps(self._added) + "}}")
        self._budget = len(self._index)  # pieces to look up before the full build pays off
        self.full: Any = None

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True) -> Any:
        if self.full is None:
            pieces = self._pieces([text] if pair is None else [text, pair])
            self._budget -= len(pieces)
            if self._budget >= 0:
                tok = _configured(self._with_vocabulary(pieces))
                return tok.encode(text, pair, add_special_tokens=add_special_tokens)
            self.full = _tokenizer_from_file(BUNDLED_TOKENIZER)
        return self.full.encode(text, pair, add_special_tokens=add_special_tokens)

    def _pieces(self, texts: Iterable[str]) -> set[str]:
        """Every string WordPiece may look up while splitting these texts' words."""
        words: set[str] = set()
        for text in texts:
            normalized = self._words.normalizer.normalize_str(text)
            words.update(w for w, _ in self._words.pre_tokenizer.pre_tokenize_str(normalized))
        pieces: set[str] = set()
        longest, prefix = self._longest, self._prefix
        for w in words:
            n = len(w)
            if n > self._max_chars:
                continue  # WordPiece makes such a word [UNK] without a lookup
            pieces.update(w[:j] for j in range(1, min(n, longest) + 1))
            for i in range(1, n):
                pieces.update(prefix + w[i:j] for j in range(i + 1, min(n, i + longest) + 1))
        return pieces

    def _with_vocabulary(self, pieces: set[str]) -> Any:
        from tokenizers import Tokenizer

        keys = [p.encode() for p in pieces]
        keys = [k for k in keys if len(k) <= self._longest]  # longer ones are in no entry
        vocab = dict(self._added)
        if keys:
            wanted = np.array(keys, dtype=self._index.dtype["token"])
            tokens, ids = self._index["token"], self._index["id"]
            at = np.minimum(np.searchsorted(tokens, wanted), len(tokens) - 1)
            for k in np.flatnonzero(tokens[at] == wanted).tolist():
                vocab[keys[k].decode()] = int(ids[at[k]])
        return Tokenizer.from_str(self._head + json.dumps(vocab) + "}}")


def _configuration_head(path: Path) -> str:
    """tokenizer.json up to its vocabulary's value. scripts/build_data.py writes model.vocab as
    the file's last member, so what comes before it is the whole configuration (tested); it is
    read without reading the 30,522 entries after it."""
    marker = b'"vocab":{'
    head = b""
    with path.open("rb") as f:
        while (at := head.find(marker)) < 0:
            chunk = f.read(8192)
            if not chunk:
                raise InputError(f"{path}: no WordPiece vocabulary")  # a damaged installation
            head += chunk
    return head[: at + len(marker) - 1].decode()


def _configured(tok: Any) -> Any:
    # A padded or truncated encoding would silently add [PAD]s or drop text.
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenizer_name(path: str | Path | None) -> str:
    return BUNDLED_NAME if path is None else str(path)


def tokenize_pair(tok, first: str, second: str) -> tuple[list[str], list[int], list[int]]:
    """A sentence pair as the model was trained on it ([CLS] first [SEP] second [SEP] for BERT):
    tokens, ids and the token_type_ids (0 for the first segment, 1 for the second)."""
    if not second.strip():
        raise InputError(f"{opt('pair')}: the second sentence is empty or only whitespace")
    enc = encode(tok, first, second)
    return list(enc.tokens), list(enc.ids), list(enc.type_ids)


def tokenize(tok, text: str, special: bool = False) -> tuple[list[str], list[int]]:
    """Tokens and ids; special tokens ([CLS]/[SEP], <|endoftext|>, …) only when asked for."""
    enc = encode(tok, text, add_special_tokens=special)
    if not enc.ids:
        raise InputError("the text produced no tokens (the tokenizer removed every character)")
    return list(enc.tokens), list(enc.ids)
