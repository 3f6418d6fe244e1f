"""Word times from cross-attention, as transformers' Whisper computes them.

`token_times` follows WhisperGenerationMixin._extract_token_timestamps for one sequence: the
cross-attention maps of the alignment heads (the generation config's `alignment_heads`, as
(layer, head) pairs), cut to the frames that hold audio, are standardised over the tokens
(per head and frame: (w − mean) / std, population std), smoothed along time by a median
filter (`median_filter_width`, reflect-padded at the edges), averaged over the heads, and the
cheapest monotonic path through −matrix is found by dynamic time warping. A token's time is
the frame where the path first reaches its row, × 0.02 s. The tokens the decoder was started
with get 0.0; the last token (which no step attended from) repeats the time before it.

`words` groups tokens into words with their times as the tokenizer's
_combine_tokens_into_words does: split where a decoded piece starts with a space, is
punctuation or a special token (or, for languages written without spaces, at every complete
character), then merge leading punctuation into the next word and trailing punctuation into the
previous one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

TIME_PRECISION = 0.02  # seconds per encoder frame (two mel frames of 10 ms)
PREPEND_PUNCTUATION = "\"'“¡¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# Languages written without spaces (split at every whole character), by name and by the code
# of their <|xx|> token.
NO_SPACE_LANGUAGES = {
    "chinese": "zh",
    "japanese": "ja",
    "thai": "th",
    "lao": "lo",
    "myanmar": "my",
    "cantonese": "yue",
}


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """The median of each `width` neighbours along the last axis, the edges reflect-padded
    (unchanged when the axis is no longer than width // 2)."""
    if width <= 0 or width % 2 != 1:
        raise ValueError("the median filter width must be an odd positive number")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dynamic_time_warping(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest path from the top-left to the bottom-right of `matrix` (tokens × frames)
    moving down, right or diagonally: (token index, frame index) of each step. Costs are kept
    in float32 and ties go right, as transformers' _dynamic_time_warping does."""
    rows, cols = matrix.shape
    cost = np.full((rows + 1, cols + 1), np.inf, dtype=np.float32)
    trace = np.full((rows + 1, cols + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    m = matrix.astype(np.float64)
    c = cost.tolist()  # python floats: the loop is the DTW's sequential recurrence
    for j in range(1, cols + 1):
        for i in range(1, rows + 1):
            c0, c1, c2 = c[i - 1][j - 1], c[i - 1][j], c[i][j - 1]
            if c0 < c1 and c0 < c2:
                best, t = c0, 0
            elif c1 < c0 and c1 < c2:
                best, t = c1, 1
            else:
                best, t = c2, 2
            c[i][j] = float(np.float32(m[i - 1, j - 1] + best))  # stored as float32
            trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = rows, cols
    text, time = [], []
    while i > 0 or j > 0:
        text.append(i - 1)
        time.append(j - 1)
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    return np.array(text[::-1]), np.array(time[::-1])


def token_times(
    cross: np.ndarray,
    heads: Sequence[tuple[int, int]],
    start_tokens: int,
    audio_frames: int | None = None,
    filter_width: int = 7,
) -> np.ndarray:
    """Seconds at which each of the L tokens starts, (L,) float32.

    cross: (layers, heads, L, frames) cross-attention of the whole sequence, teacher-forced
    (row i attends from token i; the last row is not used: generation never feeds the last
    token). heads: the alignment heads. start_tokens: the tokens the decoder was started with
    (time 0). audio_frames: mel frames that hold audio (the feature extractor's attention
    mask); the maps are cut to audio_frames // 2 encoder frames. None: every frame."""
    length = cross.shape[2]
    times = np.zeros(length, dtype=np.float32)
    w = np.stack([cross[layer, head] for layer, head in heads])[:, : length - 1]  # (A, L−1, F)
    if audio_frames is not None:
        w = w[..., : audio_frames // 2]
    w = w[:, start_tokens:].astype(np.float32)
    if w.shape[1] == 0:
        return times
    std = w.std(axis=-2, keepdims=True)
    mean = w.mean(axis=-2, keepdims=True)
    w = median_filter((w - mean) / std, filter_width).mean(axis=0)
    text, time = dynamic_time_warping(-w.astype(np.float64))
    jumps = np.diff(text, prepend=-1).astype(bool)
    jump_times = (time[jumps] * TIME_PRECISION).astype(np.float32)
    times[start_tokens : start_tokens + len(jump_times)] = jump_times
    times[start_tokens + len(jump_times) :] = jump_times[-1]
    return times


@dataclass(frozen=True)
class Word:
    text: str
    positions: list[int]  # of its tokens, in the sequence
    start: float  # seconds
    end: float


def _split_on_characters(
    ids: list[int], decode: Callable[[list[int]], str]
) -> list[tuple[str, list[int]]]:
    """Pieces of whole characters: tokens are gathered until what they decode to has no
    replacement character a byte-level token left incomplete."""
    full = decode(ids)
    out: list[tuple[str, list[int]]] = []
    current: list[int] = []
    offset = 0
    for pos, _ in enumerate(ids):
        current.append(pos)
        text = decode([ids[p] for p in current])
        bad = text.find("\ufffd")
        if bad < 0 or offset + bad >= len(full) or full[offset + bad] == "\ufffd":
            out.append((text, current))
            current = []
            offset += len(text)
    return out


def words(
    sequence: list[int],
    times: Sequence[float] | np.ndarray,
    text: list[int],
    decode: Callable[[list[int]], str],
    eos_id: int,
    language: str | None = None,
) -> list[Word]:
    """The text tokens of `sequence` (their positions `text`; `times` from token_times) grouped
    into words. As transformers' ASR pipeline times them, the token at position p spans
    times[p − 1] to times[p] (0 for the first): a word runs from its first token's start to
    its last token's end."""
    ids = [sequence[p] for p in text]
    pieces = _split_on_characters(ids, decode)
    texts: list[str] = []
    places: list[list[int]] = []  # indices into `text` of each word's tokens
    lang = (language or "english").lower().strip("<|>")
    no_spaces = lang in NO_SPACE_LANGUAGES or lang in NO_SPACE_LANGUAGES.values()
    for piece, pos in pieces:
        special = ids[pos[0]] >= eos_id
        punctuation = piece.strip() in ASCII_PUNCTUATION
        if no_spaces or special or piece.startswith(" ") or punctuation or not texts:
            texts.append(piece)
            places.append(list(pos))
        else:
            texts[-1] += piece
            places[-1] += pos
    # leading punctuation joins the word after it
    i, j = len(texts) - 2, len(texts) - 1
    while i >= 0:
        if texts[i].startswith(" ") and texts[i].strip() in PREPEND_PUNCTUATION:
            texts[j], places[j] = texts[i] + texts[j], places[i] + places[j]
            texts[i], places[i] = "", []
        else:
            j = i
        i -= 1
    # trailing punctuation joins the word before it
    i, j = 0, 1
    while j < len(texts):
        if not texts[i].endswith(" ") and texts[j] in APPEND_PUNCTUATION:
            texts[i], places[i] = texts[i] + texts[j], places[i] + places[j]
            texts[j], places[j] = "", []
        else:
            i = j
        j += 1
    out = []
    for t, pl in zip(texts, places, strict=True):
        if t and pl:
            first, last = text[pl[0]], text[pl[-1]]
            start = float(times[first - 1]) if first > 0 else 0.0
            out.append(
                Word(t, [text[p] for p in pl], round(start, 2), round(float(times[last]), 2))
            )
    return out
