"""Make the torch-free golden fixture of Whisper, once, with transformers.

  tests/fixtures/tiny_whisper/   a random Whisper (d_model 16, 2 + 2 layers × 4 heads) with a
                                 2-second window (100 encoder frames), a byte-level BPE
                                 tokenizer with Whisper's special tokens, the generation config
                                 of openai/whisper-* (language detection, forced task and
                                 <|notimestamps|>, alignment heads, suppressed tokens), and
                                 speech.wav: a syllable-like signal recorded at 8 kHz

expected.npz: transformers' run on those files (the WAV read with the standard library and
resampled to 16 kHz by scipy's resample_poly; WhisperFeatureExtractor; greedy generate() with
return_token_timestamps; an eager forward pass over the generated sequence): the sequence, the
token timestamps, encoder maps (rows 0, 33 and 99), every decoder and cross-attention map, the
logits of the last three positions.

Run:  python scripts/make_whisper_fixtures.py           (needs torch, transformers and scipy)
      python scripts/make_whisper_fixtures.py --check   (rebuild in a temporary directory and
                                                         compare with the committed files)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import whisper_utils  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
NAME = "tiny_whisper"
ENCODER_ROWS = [0, 33, 99]


def make_all(root: Path = FIXTURES) -> None:
    d = root / NAME
    d.mkdir(parents=True, exist_ok=True)
    whisper_utils.build(
        d,
        seed=7,
        chunk_seconds=2,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
    )
    wav = whisper_utils.write_wav(d / "speech.wav", whisper_utils.signal(2.0, rate=8000), 8000)
    ref = whisper_utils.reference(d, whisper_utils.read_wav(wav))
    np.savez_compressed(
        d / "expected.npz",
        sequence=np.asarray(ref["sequence"], dtype=np.int64),
        token_timestamps=ref["token_timestamps"].astype(np.float32),
        encoder_rows=np.asarray(ENCODER_ROWS, dtype=np.int64),
        encoder=ref["encoder"][:, :, ENCODER_ROWS].astype(np.float32),
        decoder=ref["decoder"].astype(np.float32),
        cross=ref["cross"].astype(np.float32),
        logits=ref["logits"][-3:].astype(np.float32),
    )
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d}: {len(ref['sequence'])} tokens, {size / 1024:.0f} KB")


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        sys.path.insert(0, str(ROOT / "scripts"))
        from fixture_check import check

        raise SystemExit(check(make_all, FIXTURES, "make_whisper_fixtures"))
    if sys.argv[1:]:
        raise SystemExit("usage: python scripts/make_whisper_fixtures.py [--check]")
    make_all()


if __name__ == "__main__":
    main()
