"""A Gemma 3 270M-shaped GGUF with random weights, for benchmarks/gguf_gemma3.py (no real file is
available offline). Written once, then reused from a cache directory (not committed):

    python benchmarks/make_gemma3_270m.py            # prints the path, writing it if needed

Geometry of google/gemma-3-270m as llama.cpp's converter writes it (arch gemma3): 18 layers,
hidden 640, 4 query heads and 1 key/value head of 256, intermediate 2048, sliding window 512
(every 6th layer global), q/k norms, 2-D tensors as Q8_0, norms F32 (stored as 1 + w).

The tokenizer is SentencePiece-style (tokenizer.ggml.model "llama") with 262,144 pieces,
scores and token types as a Gemma GGUF has: <pad> <eos> <bos> <unk> <mask> and the turn markers
as CONTROL, <unusedN> pieces, 256 <0xXX> BYTE pieces, user-defined whitespace runs, then
normal pieces, each a join of two earlier ones (so every piece splits into pieces, as in a
trained BPE vocabulary), ranked by a descending score.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF, VOCAB = 18, 640, 4, 1, 256, 2048, 262_144
CONTROL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
TURN = ["<start_of_turn>", "<end_of_turn>"]
UNUSED = 6242  # <unused0> … as in Gemma 3's vocabulary
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED_TYPE, BYTE = 1, 2, 3, 4, 5, 6
VERSION = 1  # bump when the file's contents change


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attn-cli-benchmarks"


def vocabulary(seed: int = 0) -> tuple[list[str], list[float], list[int]]:
    """262,144 pieces with scores and types, laid out as Gemma 3's."""
    rng = random.Random(seed)
    pieces: list[str] = list(CONTROL_TOKENS)
    types = [CONTROL] * len(CONTROL_TOKENS)
    pieces += [f"<unused{i}>" for i in range(UNUSED)]
    types += [UNUSED_TYPE] * UNUSED
    pieces += TURN
    types += [CONTROL] * len(TURN)
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    runs = ["\n" * k for k in range(2, 32)] + ["▁" * k for k in range(2, 32)]
    runs += ["\t" * k for k in range(1, 32)]
    pieces += runs
    types += [USER_DEFINED] * len(runs)
    # Characters: ASCII, Latin-1 letters, Greek, Cyrillic and a block of CJK ideographs.
    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0xC0, 0x250)]
    chars += [chr(c) for c in range(0x391, 0x3CA)] + [chr(c) for c in range(0x410, 0x450)]
    chars += [chr(c) for c in range(0x4E00, 0x4E00 + 6000)]
    pieces += ["▁", *chars]
    types += [NORMAL] * (1 + len(chars))
    seen = set(pieces)
    # Words of English text first (what the benchmark's text mostly tokenizes into), then joins.
    text = (Path(__file__).resolve().parent.parent / "samples" / "long.txt").read_text()
    pool = [p for p in ["▁", *chars] if len(p) == 1]
    lowers = [c for c in "etaoinshrdlcumwfgypbvkjxqz"]
    for word in dict.fromkeys(text.split()):
        for piece in (word, "▁" + word):
            for k in range(2, len(piece) + 1):
                if piece[:k] not in seen and piece[: k - 1] in seen and piece[k - 1] in seen:
                    seen.add(piece[:k])
                    pieces.append(piece[:k])
                    types.append(NORMAL)
    recent = pieces[-5000:] + pool + lowers * 50
    while len(pieces) < VOCAB:
        a = rng.choice(recent)
        b = rng.choice(lowers) if rng.random() < 0.6 else rng.choice(recent)
        if rng.random() < 0.3 and not a.startswith("▁") and not a.startswith("<"):
            a = "▁" + a
        p = a + b
        if len(p) > 16 or p in seen or p.startswith("<") or "\n" in p or "\t" in p:
            continue
        seen.add(p)
        pieces.append(p)
        types.append(NORMAL)
        recent.append(p)
    scores = [0.0] * len(pieces)
    for rank, i in enumerate(i for i, t in enumerate(types) if t == NORMAL):
        scores[i] = -float(rank)
    return pieces[:VOCAB], scores[:VOCAB], types[:VOCAB]


def write(path: Path, seed: int = 0) -> None:
    import gguf

    rng = np.random.default_rng(seed)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def matrix(rows: int, cols: int) -> np.ndarray:
        a = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        return gguf.quants.quantize(a, q8)

    def norm(size: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(size, dtype=np.float32)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("gemma-3-270m-random")
    w.add_context_length(32768)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(512)
    w.add_file_type(7)  # MOSTLY_Q8_0
    pieces, scores, types = vocabulary(seed)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)
    # The embedding in row blocks: quantising 168M numbers at once would hold them all twice.
    blocks = [matrix(min(16384, VOCAB - r), HIDDEN) for r in range(0, VOCAB, 16384)]
    w.add_tensor("token_embd.weight", np.concatenate(blocks), raw_dtype=q8)
    del blocks
    w.add_tensor("output_norm.weight", norm(HIDDEN))
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(HIDDEN))
        w.add_tensor(p + "attn_q.weight", matrix(q, HIDDEN), raw_dtype=q8)
        w.add_tensor(p + "attn_k.weight", matrix(kv, HIDDEN), raw_dtype=q8)
        w.add_tensor(p + "attn_v.weight", matrix(kv, HIDDEN), raw_dtype=q8)
        w.add_tensor(p + "attn_output.weight", matrix(HIDDEN, q), raw_dtype=q8)
        w.add_tensor(p + "attn_q_norm.weight", norm(HEAD_DIM))
        w.add_tensor(p + "attn_k_norm.weight", norm(HEAD_DIM))
        w.add_tensor(p + "post_attention_norm.weight", norm(HIDDEN))
        w.add_tensor(p + "ffn_norm.weight", norm(HIDDEN))
        w.add_tensor(p + "ffn_gate.weight", matrix(FF, HIDDEN), raw_dtype=q8)
        w.add_tensor(p + "ffn_up.weight", matrix(FF, HIDDEN), raw_dtype=q8)
        w.add_tensor(p + "ffn_down.weight", matrix(HIDDEN, FF), raw_dtype=q8)
        w.add_tensor(p + "post_ffw_norm.weight", norm(HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gemma3_270m(directory: Path | None = None) -> Path:
    """The file's path, written first (atomically) when it is not there yet."""
    directory = directory or cache_dir()
    path = directory / f"gemma-3-270m-random-v{VERSION}.Q8_0.gguf"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


if __name__ == "__main__":
    print(gemma3_270m(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
