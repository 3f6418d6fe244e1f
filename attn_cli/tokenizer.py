"""Text -> tokens with HuggingFace `tokenizers`, never padded, never silently truncated."""

from __future__ import annotations

from pathlib import Path

from attn_cli.errors import InputError

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_TOKENIZER = DATA_DIR / "tokenizer.json"
BUNDLED_NAME = "minilm-l6 (bundled bert-base-uncased WordPiece)"


def resolve_tokenizer_path(path: str | Path | None) -> Path:
    if path is None:
        return BUNDLED_TOKENIZER
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise InputError(f"--tokenizer: no tokenizer.json in directory {path}")
    elif not p.is_file():
        raise InputError(f"--tokenizer: {path} does not exist")
    return p


def load_tokenizer(path: str | Path | None = None):
    """Load a tokenizer.json (the bundled one by default) with padding and truncation off."""
    from tokenizers import Tokenizer

    p = resolve_tokenizer_path(path)
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception with a serde message
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p} is not a valid tokenizer.json ({reason[:120]})") from None
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
        raise InputError("--pair: the second sentence is empty or only whitespace")
    enc = tok.encode(first, second, add_special_tokens=True)
    return list(enc.tokens), list(enc.ids), list(enc.type_ids)


def tokenize(tok, text: str, special: bool = False) -> tuple[list[str], list[int]]:
    """Tokens and ids; special tokens ([CLS]/[SEP], <|endoftext|>, …) only when asked for."""
    enc = tok.encode(text, add_special_tokens=special)
    if not enc.ids:
        raise InputError("the text produced no tokens (the tokenizer removed every character)")
    return list(enc.tokens), list(enc.ids)
