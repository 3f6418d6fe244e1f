"""Hostile and awkward audio files for tests/test_audio.py: each is small on disk (the long
one claims a size it does not hold, or is a sparse file), none is expanded by the tests.

    python -m tests.hostile_audio DIR     # writes them all into DIR, to try by hand
"""

from __future__ import annotations

import struct
import sys
import wave
from pathlib import Path

import numpy as np

RATE = 16_000


def tone(seconds: float, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_pcm(path: Path, x: np.ndarray, rate: int = RATE, width: int = 2) -> Path:
    """x: (frames,) or (frames, channels) floats in [−1, 1) as `width`-byte PCM."""
    x2 = x.reshape(len(x), 1) if x.ndim == 1 else x
    if width == 1:
        data = np.clip(np.round(x2 * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        v = np.clip(np.round(x2 * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")
        data = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = float(1 << (8 * width - 1))
        kind = "<i2" if width == 2 else "<i4"
        data = np.clip(np.round(x2 * scale), -scale, scale - 1).astype(kind).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x2.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def riff(fmt: bytes, data: bytes, declared: int | None = None) -> bytes:
    """A RIFF/WAVE file with these 'fmt ' and 'data' bodies (`declared`: the data size the
    header claims)."""
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body) - len(data) + size) + body


def float_fmt(channels: int, rate: int, bits: int = 32, extensible: bool = False) -> bytes:
    align = channels * bits // 8
    if not extensible:
        return struct.pack("<HHIIHH", 3, channels, rate, rate * align, align, bits)
    guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return (
        struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22, bits, 0)
        + guid
    )


def write_float(path: Path, x: np.ndarray, rate: int = RATE, extensible: bool = False) -> Path:
    x2 = x.reshape(len(x), -1).astype("<f4")
    path.write_bytes(riff(float_fmt(x2.shape[1], rate, 32, extensible), x2.tobytes()))
    return path


def make_all(directory: Path) -> dict[str, Path]:
    """name -> file, for every hostile case."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["empty"] = write_pcm(d / "empty.wav", np.zeros(0, np.float32))
    files["zero_bytes"] = d / "zero_bytes.wav"
    files["zero_bytes"].write_bytes(b"")
    whole = write_pcm(d / "whole.wav", tone(1.0)).read_bytes()
    files["truncated"] = d / "truncated.wav"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["header_only"] = d / "header_only.wav"
    files["header_only"].write_bytes(whole[:20])
    files["not_audio"] = d / "not_audio.wav"
    files["not_audio"].write_text("hello, this is not a sound\n")
    files["riff_not_wave"] = d / "riff.wav"
    files["riff_not_wave"].write_bytes(b"RIFF\x10\x00\x00\x00AVI LIST")
    # three hours at 16 kHz, 16-bit mono: the header says so, the file is sparse
    hours = 3 * 3600 * RATE
    path = d / "three_hours.wav"
    head = riff(struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16), b"", declared=hours * 2)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + hours * 2)
    files["three_hours"] = path
    files["three_hours_claimed"] = d / "three_hours_claimed.wav"  # the header lies
    files["three_hours_claimed"].write_bytes(head + b"\x00" * 1000)
    files["nan_float"] = d / "nan.wav"
    files["nan_float"].write_bytes(riff(float_fmt(1, RATE), np.full(100, np.nan, "<f4").tobytes()))
    files["many_channels"] = write_pcm(d / "many_channels.wav", np.zeros((10, 20), np.float32))
    files["silly_rate"] = d / "silly_rate.wav"
    files["silly_rate"].write_bytes(
        riff(struct.pack("<HHIIHH", 1, 1, 7, 14, 2, 16), b"\x00\x00" * 100)
    )
    files["alaw"] = d / "alaw.wav"
    files["alaw"].write_bytes(riff(struct.pack("<HHIIHH", 6, 1, RATE, RATE, 1, 8), b"\x00" * 100))
    return files


if __name__ == "__main__":
    for name, path in make_all(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
