"""Sound in: read an audio file, make it mono at 16 kHz, and compute Whisper's log-mel
spectrogram exactly as transformers' `WhisperFeatureExtractor` (its numpy path) does.

Reading. WAV is read with the standard library (`wave`: 8-bit unsigned, 16-, 24- and 32-bit
signed PCM); 32/64-bit float WAV and WAVE_FORMAT_EXTENSIBLE, which `wave` refuses, through a
small RIFF chunk walk. Integers become floats as libsndfile does (x / 2^(bits−1); 8-bit:
(x − 128) / 128). FLAC, MP3 and Ogg go through `soundfile` (the optional `[audio]` extra),
imported only when such a file is read. Several channels are averaged to one.

Untrusted files: the header is validated first (format, channels, rate, sizes), and at most
one Whisper window (30 s) of frames is ever read: a longer recording is WINDOWED to its first
30 s, as the feature extractor truncates it, and the trace says so. An empty, truncated or
non-audio file, or NaN/inf samples, is one line of error.

Resampling. A polyphase FIR in numpy, the same filter and phase as scipy's
`resample_poly(x, up, down)` (Kaiser window β = 5, 2·10·max(up, down) + 1 taps, up/down
reduced by their gcd): there is one code path, scipy is not needed, and the tests check it
against scipy within 1e-9.

Features. Reflect-padded frames of `n_fft` samples every `hop_length`, a periodic Hann window,
|rfft|² (stored as complex64 first, as transformers does), slaney mel filters
(audio_utils.mel_filter_bank), log10 with floor 1e-10, the last frame dropped, clamped to
max − 8, then (x + 4) / 4; the samples are first zero-padded (or truncated) to
`chunk_length` seconds.
"""

from __future__ import annotations

import json
import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.errors import InputError, opt

PREPROCESSOR_CONFIG = "preprocessor_config.json"
MIN_RATE, MAX_RATE = 1_000, 192_000  # Hz a file may declare
MAX_CHANNELS = 8
FLOAT_FORMAT, PCM_FORMAT, EXTENSIBLE_FORMAT = 3, 1, 0xFFFE


@dataclass(frozen=True)
class Features:
    """transformers' WhisperFeatureExtractor settings (its defaults: whisper-tiny … -medium)."""

    feature_size: int = 80  # mel bins (128 for large-v3)
    sampling_rate: int = 16_000
    hop_length: int = 160
    chunk_length: int = 30  # seconds: one window
    n_fft: int = 400
    padding_value: float = 0.0

    @property
    def n_samples(self) -> int:
        return self.chunk_length * self.sampling_rate

    @property
    def frames(self) -> int:
        """Spectrogram frames of one window (3,000 for 30 s)."""
        return self.n_samples // self.hop_length

    def describe(self) -> dict[str, Any]:
        return {
            "mel_bins": self.feature_size,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "window_seconds": self.chunk_length,
            "n_fft": self.n_fft,
        }


def features(settings: dict[str, Any]) -> Features:
    """The Features of a preprocessor_config.json's `settings`, each value checked."""
    base = Features()
    limits = {
        "feature_size": (1, 512),
        "sampling_rate": (MIN_RATE, MAX_RATE),
        "hop_length": (1, 100_000),
        "chunk_length": (1, 600),
        "n_fft": (2, 100_000),
    }
    values: dict[str, Any] = {}
    for key, (low, high) in limits.items():
        value = settings.get(key, getattr(base, key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(
                f"{PREPROCESSOR_CONFIG}: {key} {value!r} is not a whole number from {low} to {high}"
            )
        values[key] = value
    pad = settings.get("padding_value", base.padding_value)
    if isinstance(pad, bool) or not isinstance(pad, int | float) or not math.isfinite(pad):
        raise InputError(f"{PREPROCESSOR_CONFIG}: padding_value {pad!r} is not a number")
    return Features(**values, padding_value=float(pad))


def load_features(directory: Path) -> Features:
    """The checkpoint's feature-extractor settings (defaults when it has no such file)."""
    path = directory / PREPROCESSOR_CONFIG
    if not path.is_file():
        return Features()
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{path}: not a JSON object")
    return features(settings)


@dataclass(frozen=True)
class Audio:
    """Mono samples at the model's rate, at most one window long."""

    samples: np.ndarray  # float32 (n,)
    sampling_rate: int
    duration: float  # seconds of the whole recording (more than the samples when windowed)
    source_rate: int  # the rate it was recorded at
    name: str  # the file's name, or "audio" for an array

    @property
    def windowed(self) -> bool:
        return self.duration > len(self.samples) / self.sampling_rate + 1e-9

    @property
    def note(self) -> str | None:
        if not self.windowed:
            return None
        kept = len(self.samples) / self.sampling_rate
        return (
            f"{self.name} is {_clock(self.duration)} long: windowed to its first "
            f"{kept:g} s, the one window Whisper reads (the rest is not read)"
        )


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min {sec:02d} s"
    return f"{m} min {sec:02d} s" if m else f"{seconds:.2f} s"


# ---------------------------------------------------------------------------------- reading


def read(path: str | Path, max_seconds: float) -> tuple[np.ndarray, int, float]:
    """(mono float32 samples of at most `max_seconds`, the file's rate, its whole duration)."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise InputError(f"{name}: no such audio file")
    with path.open("rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _read_wav(path, max_seconds)
    if head[:4] in (b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        raise InputError(f"{name}: a {head[:4].decode()} WAV file; only RIFF (little-endian) WAV")
    if head[:4] in (b"fLaC", b"OggS") or head[:3] == b"ID3" or _mp3_sync(head):
        return _read_soundfile(path, max_seconds)
    raise InputError(f"{name}: not audio: expected a WAV file (or FLAC, MP3, Ogg)")


def _mp3_sync(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def _check_header(name: str, channels: int, rate: int, frames: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"{name}: {channels} channels; attn-cli reads 1 to {MAX_CHANNELS}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InputError(
            f"{name}: a sample rate of {rate:,} Hz; attn-cli reads {MIN_RATE:,} to {MAX_RATE:,} Hz"
        )
    if frames <= 0:
        raise InputError(f"{name}: the file holds no audio samples")


def _read_wav(path: Path, max_seconds: float) -> tuple[np.ndarray, int, float]:
    name = str(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            _check_header(name, channels, rate, frames)
            want = min(frames, int(math.ceil(max_seconds * rate)))
            raw = w.readframes(want)
    except wave.Error as exc:
        if "unknown format" in str(exc):  # float or WAVE_FORMAT_EXTENSIBLE: not for `wave`
            return _read_riff(path, max_seconds)
        raise InputError(f"{name}: not a readable WAV file ({exc})") from None
    except (EOFError, struct.error):
        raise InputError(f"{name}: the WAV header is cut short") from None
    got = len(raw) // (width * channels)
    if got < want:
        raise InputError(
            f"{name}: truncated: the header promises {frames:,} frames, the file holds {got:,}"
        )
    x = _pcm(raw[: got * width * channels], width, name)
    return _finish(x.reshape(got, channels), name), rate, frames / rate


def _pcm(raw: bytes, width: int, name: str) -> np.ndarray:
    """Interleaved little-endian PCM integers as float32 in [−1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = (v << 8) >> 8  # sign-extend the 24-bit value
        return v.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise InputError(f"{name}: {8 * width}-bit samples; PCM WAV is 8, 16, 24 or 32 bits")


def _read_riff(path: Path, max_seconds: float) -> tuple[np.ndarray, int, float]:
    """Float and WAVE_FORMAT_EXTENSIBLE WAV: walk the RIFF chunks to 'fmt ' and 'data'."""
    name = str(path)
    size = path.stat().st_size
    fmt: tuple[int, int, int, int] | None = None
    with path.open("rb") as f:
        f.seek(12)
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{name}: the WAV file has no 'data' chunk")
            chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
            start = f.tell()
            if chunk == b"fmt ":
                body = f.read(min(length, 64))
                if len(body) < 16:
                    raise InputError(f"{name}: the WAV 'fmt ' chunk is cut short")
                code, channels, rate, _, align, bits = struct.unpack("<HHIIHH", body[:16])
                if code == EXTENSIBLE_FORMAT:
                    if len(body) < 26:
                        raise InputError(f"{name}: the WAV 'fmt ' extension is cut short")
                    code = struct.unpack("<H", body[24:26])[0]  # the subformat GUID's first field
                fmt = (code, channels, rate, bits)
                if align != channels * bits // 8 or bits % 8:
                    raise InputError(f"{name}: the WAV 'fmt ' chunk is inconsistent")
            elif chunk == b"data":
                if fmt is None:
                    raise InputError(f"{name}: the WAV 'data' chunk comes before 'fmt '")
                code, channels, rate, bits = fmt
                width = bits // 8
                frames = length // (channels * width) if channels and width else 0
                _check_header(name, channels, rate, frames)
                if code == FLOAT_FORMAT and bits not in (32, 64):
                    raise InputError(f"{name}: {bits}-bit float samples; float WAV is 32 or 64")
                if code not in (FLOAT_FORMAT, PCM_FORMAT):
                    raise InputError(f"{name}: WAV format {code}; attn-cli reads PCM and float")
                want = min(frames, int(math.ceil(max_seconds * rate)))
                if start + want * channels * width > size:
                    held = max(0, size - start) // (channels * width)
                    raise InputError(
                        f"{name}: truncated: the header promises {frames:,} frames, "
                        f"the file holds {held:,}"
                    )
                raw = f.read(want * channels * width)
                if code == FLOAT_FORMAT:
                    x = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
                else:
                    x = _pcm(raw, width, name)
                return _finish(x.reshape(want, channels), name), rate, frames / rate
            f.seek(start + length + (length & 1))


def _read_soundfile(path: Path, max_seconds: float) -> tuple[np.ndarray, int, float]:
    name = str(path)
    try:
        import soundfile  # type: ignore[import-untyped]
    except ImportError:
        raise InputError(
            f"{name}: reading FLAC, MP3 or Ogg needs soundfile: pip install 'attn-cli[audio]' "
            "(or convert it to WAV)",
            exit_code=1,
        ) from None
    try:
        with soundfile.SoundFile(str(path)) as f:
            channels, rate, frames = f.channels, f.samplerate, f.frames
            _check_header(name, channels, rate, frames)
            want = min(frames, int(math.ceil(max_seconds * rate)))
            x = f.read(want, dtype="float32", always_2d=True)
    except InputError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:  # soundfile.LibsndfileError is one
        raise InputError(f"{name}: the audio cannot be decoded ({exc})") from None
    if len(x) < want:
        raise InputError(
            f"{name}: truncated: the header promises {frames:,} frames, the file holds {len(x):,}"
        )
    return _finish(x, name), rate, frames / rate


def _finish(x: np.ndarray, name: str) -> np.ndarray:
    """(frames, channels) -> mono float32 (the channels' mean), finite."""
    if not np.isfinite(x).all():
        raise InputError(f"{name}: the audio holds NaN or infinite samples")
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0], dtype=np.float32)
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)


def load(
    source: str | Path | np.ndarray,
    feats: Features,
    sampling_rate: int | None = None,
    param: str = "audio",
) -> Audio:
    """A path (read, windowed) or a 1-D/2-D array at `sampling_rate` (channels last; floats
    in [−1, 1], or PCM integers: int16 / 32768 …) -> mono samples at the model's rate, at most
    one window long."""
    window = float(feats.chunk_length)
    if isinstance(source, np.ndarray):
        if sampling_rate is None:
            raise InputError(f"{opt(param)}: an array needs {opt('sampling_rate')} (in Hz)")
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int):
            raise InputError(f"{opt('sampling_rate', sampling_rate)} is not a whole number")
        arr = np.asarray(source)
        if arr.ndim not in (1, 2) or arr.size == 0 or arr.dtype.kind not in "fiu":
            raise InputError(
                f"{opt(param)}: an array must be non-empty numbers, (samples,) or "
                f"(samples, channels); got {arr.shape} {arr.dtype}"
            )
        x2 = arr.reshape(len(arr), -1)
        _check_header(opt(param), x2.shape[1], sampling_rate, len(x2))
        total = len(x2) / sampling_rate
        x2 = x2[: int(math.ceil(window * sampling_rate))]
        if arr.dtype.kind in "iu":  # PCM integers, scaled as a WAV file's are
            info = np.iinfo(arr.dtype)
            middle = 0 if arr.dtype.kind == "i" else (int(info.max) + 1) // 2
            x2 = (x2.astype(np.float64) - middle) / float(int(info.max) + 1 - middle)
        x2 = x2.astype(np.float32)
        x, rate, name = _finish(x2, opt(param)), sampling_rate, "the audio"
    elif isinstance(source, str | Path):
        x, rate, total = read(source, window)
        name = str(source)
    else:
        raise InputError(
            f"{opt(param)}: takes an audio file's path or an array of samples, "
            f"not {type(source).__name__}"
        )
    y = resample(x, rate, feats.sampling_rate)[: feats.n_samples]
    return Audio(y, feats.sampling_rate, total, rate, name)


# ------------------------------------------------------------------------------- resampling


def _firwin_kaiser(taps: int, cutoff: float, beta: float = 5.0) -> np.ndarray:
    """scipy.signal.firwin(taps, cutoff, window=("kaiser", beta)): a low-pass with unit gain
    at DC, `cutoff` relative to Nyquist."""
    m = np.arange(taps) - 0.5 * (taps - 1)
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(taps, beta)
    return h / h.sum()


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """x at `rate` -> at `target` Hz, as scipy.signal.resample_poly(x, up, down) computes it
    (float64 inside, float32 out)."""
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    if up == down:
        return x.astype(np.float32)
    n_in = len(x)
    n_out = -(-n_in * up // down)
    max_rate = max(up, down)
    half = 10 * max_rate
    h = _firwin_kaiser(2 * half + 1, 1.0 / max_rate) * up
    pre = down - half % down  # zeros before the filter put the output samples at its centre
    remove = (half + pre) // down
    h = np.concatenate([np.zeros(pre), h])
    # upfirdn: y[k] = Σ_j h[j] · xu[k·down − j] with xu the zero-stuffed input; keep
    # y[remove : remove + n_out]. Polyphase: for t = k·down, only taps j ≡ t (mod up) meet a
    # sample: y[k] = Σ_m h[t mod up + m·up] · x[t // up − m].
    taps_per_phase = -(-len(h) // up)
    phases = np.zeros((up, taps_per_phase))
    padded = np.zeros(up * taps_per_phase)
    padded[: len(h)] = h
    phases[:] = padded.reshape(taps_per_phase, up).T
    xp = np.concatenate([np.zeros(taps_per_phase), x.astype(np.float64)])
    out = np.empty(n_out)
    lag = np.arange(taps_per_phase)
    step = max(1, 1 << 22 >> max(1, taps_per_phase.bit_length()))  # ~4M products per block
    for a in range(0, n_out, step):
        t = (np.arange(a, min(a + step, n_out)) + remove) * down
        q = t // up
        idx = q[:, None] - lag[None, :] + taps_per_phase
        valid = idx < len(xp)
        vals = np.where(valid, xp[np.minimum(idx, len(xp) - 1)], 0.0)
        out[a : a + len(t)] = np.einsum("km,km->k", phases[t % up], vals)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------- features


def hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """The slaney mel scale (audio_utils.hertz_to_mel, mel_scale="slaney")."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(
        log_region, 15.0 + np.log(np.maximum(freq, 1e-300) / 1000.0) * (27.0 / np.log(6.4)), mels
    )


def mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), freq)


def mel_filter_bank(bins: int, mels: int, f_max: float, rate: int) -> np.ndarray:
    """audio_utils.mel_filter_bank(bins, mels, 0, f_max, rate, norm="slaney",
    mel_scale="slaney"): (bins, mels) triangles, each of area-normalised height."""
    mel_freqs = np.linspace(hertz_to_mel(np.array(0.0)), hertz_to_mel(np.array(f_max)), mels + 2)
    filter_freqs = mel_to_hertz(mel_freqs)
    fft_freqs = np.linspace(0, rate // 2, bins)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (filter_freqs[2 : mels + 2] - filter_freqs[:mels]))[None, :]


def log_mel(samples: np.ndarray, feats: Features) -> np.ndarray:
    """Whisper's input features, (feature_size, frames) float32, of `samples` padded with
    `padding_value` (or truncated) to one window."""
    x = np.full(feats.n_samples, feats.padding_value, dtype=np.float32)
    n = min(len(samples), feats.n_samples)
    x[:n] = samples[:n]
    n_fft, hop = feats.n_fft, feats.hop_length
    wave64 = np.pad(x, n_fft // 2, mode="reflect").astype(np.float64)
    count = 1 + (len(wave64) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(wave64, n_fft)[::hop][:count]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2  # (frames, bins)
    filters = mel_filter_bank(n_fft // 2 + 1, feats.feature_size, 8000.0, feats.sampling_rate)
    mel = np.maximum(1e-10, filters.T @ power.T)
    logs = np.log10(mel).astype(np.float32)[:, :-1]
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)
