"""Small hostile files, made into a directory for tests/test_hostile.py to replay through the
CLI: each stands for a class of cases a hostile-input run found (issue 28). Every file is
small on disk (bombs are sparse or claim sizes they do not hold) and none is ever expanded by
the tests that pass.

    python -m tests.hostile DIR     # writes them all into DIR, to try by hand
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

# Escape sequences a terminal acts on: clear the screen, write the clipboard (OSC 52), a
# hyperlink (OSC 8), and a bare C1 control (CSI).
CLEAR = "\x1b[2J\x1b[H"
CLIPBOARD = "\x1b]52;c;aGFja2Vk\x07"
LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
C1 = "\x9b31m"
PAYLOAD = CLEAR + CLIPBOARD + LINK + C1


def escaping_trace(directory: Path) -> Path:
    """A saved trace whose every string field read from the file carries escape sequences:
    the text, notes, config keys and values, step names, formulas, descriptions, row and
    column labels."""
    import attn_cli
    from attn_cli.export import dumps_traces

    t = attn_cli.explain("hi how are you")
    doc = json.loads(dumps_traces([t]))
    doc["text"] = "hi" + PAYLOAD
    doc["notes"] = [f"note {PAYLOAD}"]
    doc["config"][f"key{CLEAR}"] = f"value{CLIPBOARD}"
    doc["config"]["pipeline"] = "toy" + LINK
    for step in doc["steps"]:
        if step["name"] != "W":  # the views find the attention maps by this name
            step["name"] += CLEAR
        step["formula"] += CLIPBOARD
        step["description"] += LINK
        step["rows"] = [r + C1 for r in step["rows"]]
        step["cols"] = [c + CLEAR for c in step["cols"]]
    path = directory / "escaping.json"
    path.write_text(json.dumps(doc))
    return path


def long_label_trace(directory: Path, chars: int = 300_000) -> Path:
    """A saved trace with one token (and so one heatmap row label) of `chars` characters."""
    import attn_cli

    t = attn_cli.explain("hi how are you")
    t.tokens[1] = "x" * chars
    for step in t.steps:
        if len(step.rows) == len(t.tokens):
            step.rows[1] = t.tokens[1]
    path = directory / "long_label.json"
    t.save(path)
    return path


def word_vectors_with_escapes(directory: Path) -> Path:
    """A GloVe-style text file whose name holds an escape sequence and which lacks every
    token, so the run's "no vector for …" note names both."""
    path = directory / f"vectors{CLEAR}.txt"
    path.write_text("zebra 1 0\n")
    return path


def npz_bomb(directory: Path, claimed: int = 3 << 30) -> Path:
    """An .npz of a few hundred bytes whose member says it decompresses to `claimed` bytes of
    float64 zeros: its .npy header and its zip directory agree, only the data is missing (the
    deflate stream holds the header alone). Nothing that reads the headers first inflates it."""
    rows = claimed // (8 * 1024)
    header = _npy_header(np.dtype("<f8"), (rows, 1024))
    path = directory / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("embeddings.npy", header)
    data = bytearray(path.read_bytes())
    size = len(header) + rows * 1024 * 8
    assert size < 1 << 32  # fits the 32-bit size fields: no zip64 record needed
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, size)  # uncompressed size, local header
    struct.pack_into("<I", data, central + 24, size)  # and central directory
    path.write_bytes(bytes(data))
    return path


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype.str, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_nested_arrays(directory: Path, count: int = 25_000_000) -> Path:
    """A GGUF whose one metadata value is an array of `count` empty arrays (300 MB for 25
    million), written sparse: the 12 bytes of an empty UINT8 array are all zeros, so the file
    takes no disk space."""
    path = directory / "nested.gguf"
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1))
        f.write(_gguf_string("general.nested") + struct.pack("<IIQ", 9, 9, count))
        f.truncate(f.tell() + 12 * count)  # count × (item type 0, length 0)
    return path


def gguf_with_escapes(directory: Path) -> Path:
    """A small valid GGUF header whose architecture and file name hold escape sequences (what
    `attn-cli models` lists from LM Studio's and the HF cache's folders)."""
    path = directory / f"model{CLEAR}.gguf"
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1))
        f.write(_gguf_string("general.architecture") + struct.pack("<I", 8))
        f.write(_gguf_string("llama" + PAYLOAD))
        f.write(b"\0" * (-f.tell() % 32))  # the (empty) tensor data starts aligned
    return path


def hf_cache_with_escapes(cache: Path) -> Path:
    """An HF hub cache holding one repository whose name and config.json model_type hold
    escape sequences."""
    repo = cache / f"models--evil{CLEAR}--name{CLIPBOARD}"
    snap = repo / "snapshots" / "0123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123")
    (snap / "config.json").write_text(json.dumps({"model_type": "bert" + PAYLOAD}))
    return cache


def catastrophic_regex_tokenizer(directory: Path) -> Path:
    """A tokenizer.json whose pre-tokenizer splits on (a+)+$: Oniguruma gives up on
    'aaaa…b' with a retry-limit error, which the tokenizers library raises as a Rust panic."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(a+)+$"), "isolated")
    path = directory / "regex-tokenizer.json"
    tok.save(str(path))
    return path


CATASTROPHIC_TEXT = "a" * 40 + "b"


def missing_special_token_tokenizer(directory: Path) -> Path:
    """A tokenizer.json whose template adds [CLS], a special token it does not define: a Rust
    panic ("no entry found for key") when special tokens are added."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = directory / "template-tokenizer.json"
    tok.save(str(path))
    doc = json.loads(path.read_text())
    sequence = {"Sequence": {"id": "A", "type_id": 0}}
    doc["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, sequence],
        "pair": [sequence, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {},
    }
    path.write_text(json.dumps(doc))
    return path


def checkpoint_that_does_not_load(directory: Path, fixture: Path) -> Path:
    """A copy of a checkpoint directory whose model.safetensors is cut in half: it resolves
    (config.json, tokenizer.json, a weights file) but does not load."""
    import shutil

    out = directory / "truncated-checkpoint"
    shutil.copytree(fixture, out)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return out


def sticky_directory_with_planted_link(directory: Path, victim: Path) -> Path:
    """A sticky world-writable directory (as /tmp) holding `report.json`, a symlink to
    `victim` owned by another user (uid 65534, nobody): needs root to give it away."""
    shared = directory / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    link = shared / "report.json"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)
    return link


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "hostile")
    out.mkdir(parents=True, exist_ok=True)
    for make in (
        escaping_trace,
        long_label_trace,
        word_vectors_with_escapes,
        npz_bomb,
        gguf_nested_arrays,
        gguf_with_escapes,
        catastrophic_regex_tokenizer,
        missing_special_token_tokenizer,
    ):
        print(make(out))
    print(hf_cache_with_escapes(out / "hf-cache"))


if __name__ == "__main__":
    main(sys.argv[1:])
