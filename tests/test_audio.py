"""The audio front end: WAV reading (every PCM width, float, extensible, stereo), resampling
as scipy's resample_poly, Whisper's log-mel spectrogram as transformers' feature extractor,
and hostile files refused in one line (tests/hostile_audio.py makes them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attn_cli import audio
from attn_cli.errors import InputError
from tests.conftest import require
from tests.hostile_audio import RATE, make_all, tone, write_float, write_pcm


def speechlike(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Tones that come and go, plus noise: a spectrogram with structure in time and frequency."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t)
    x = env * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1830 * t * (1 + t)))
    return (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.reference
@pytest.mark.parametrize(
    ("seconds", "settings"),
    [
        (7.3, {}),
        (30.0, {}),
        (41.0, {}),
        (0.2, {"feature_size": 128}),
        (3.0, {"padding_value": 0.1}),
    ],
)
def test_log_mel_equals_transformers(seconds, settings):
    transformers = require("transformers")
    fe = transformers.WhisperFeatureExtractor(**settings)
    feats = audio.features(settings)
    x = speechlike(seconds)
    mine = audio.log_mel(x, feats)
    assert mine.shape == (feats.feature_size, 3000) and mine.dtype == np.float32
    ref = fe(x, sampling_rate=RATE, return_tensors="np")["input_features"][0]  # the torch path
    assert np.abs(mine - ref).max() < 1e-4
    n = min(len(x), fe.n_samples)
    padded = np.full(fe.n_samples, fe.padding_value, np.float32)
    padded[:n] = x[:n]
    ref_np = fe._np_extract_fbank_features(padded[None], "cpu")[0]  # its numpy path
    assert np.abs(mine - ref_np).max() < 1e-5


@pytest.mark.reference
def test_mel_filters_equal_transformers():
    audio_utils = require("transformers.audio_utils")
    for mels in (80, 128):
        ref = audio_utils.mel_filter_bank(
            201, mels, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney"
        )
        np.testing.assert_allclose(audio.mel_filter_bank(201, mels, 8000.0, 16000), ref, atol=1e-12)


def test_log_mel_is_not_vacuous():
    """Silence and a tone differ; the 30-s padding is what the feature extractor pads with."""
    feats = audio.Features()
    quiet = audio.log_mel(np.zeros(1600, np.float32), feats)
    loud = audio.log_mel(tone(1.0), feats)
    assert np.ptp(quiet) == 0 and np.ptp(loud) > 1
    # the tone at 440 Hz is loudest in the mel bin whose triangle covers 440 Hz
    filters = audio.mel_filter_bank(201, 80, 8000.0, 16000)
    assert loud[:, 10:90].mean(axis=1).argmax() == filters[440 * 400 // 16000].argmax()


@pytest.mark.reference
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 24000, 44100, 48000, 44101, 96000])
def test_resample_equals_scipy_resample_poly(rate):
    signal = require("scipy.signal")
    x = np.random.default_rng(rate).standard_normal(rate // 2 + 7).astype(np.float32)
    g = np.gcd(rate, 16000)
    ref = signal.resample_poly(x.astype(np.float64), 16000 // g, rate // g)
    mine = audio.resample(x, rate, 16000)
    assert mine.shape == ref.shape
    assert np.abs(mine - ref).max() < 1e-6  # float32 out


def test_resample_keeps_a_tone():
    y = audio.resample(tone(1.0, 44100, 1000.0), 44100, 16000)
    assert len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y))
    assert spectrum.argmax() == 1000
    np.testing.assert_array_equal(audio.resample(tone(0.1), 16000, 16000), tone(0.1))


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_read_as_libsndfile_scales_them(tmp_path, width):
    x = tone(0.5, 16000)
    path = write_pcm(tmp_path / f"w{width}.wav", x, width=width)
    a = audio.load(path, audio.Features())
    step = 1.0 / (1 << (8 * width - 1))
    assert a.samples.shape == x.shape and np.abs(a.samples - x).max() <= step
    assert a.note is None and a.source_rate == 16000


@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav_through_the_riff_walk(tmp_path, extensible):
    x = tone(0.5, 16000)
    a = audio.load(write_float(tmp_path / "f.wav", x, extensible=extensible), audio.Features())
    np.testing.assert_array_equal(a.samples, x)


def test_stereo_is_mixed_down_and_resampled(tmp_path):
    left, right = tone(1.0, 44100, 300.0), tone(1.0, 44100, 900.0)
    path = write_pcm(tmp_path / "st.wav", np.stack([left, right], axis=1), rate=44100)
    a = audio.load(path, audio.Features())
    mono = audio.resample((left + right) / 2, 44100, 16000)
    assert a.source_rate == 44100 and len(a.samples) == 16000
    assert np.abs(a.samples - mono).max() < 1e-4


def test_arrays_in(tmp_path):
    x = tone(2.0, 8000)
    a = audio.load(x, audio.Features(), sampling_rate=8000)
    np.testing.assert_allclose(a.samples, audio.resample(x, 8000, 16000))
    with pytest.raises(InputError, match="sampling_rate"):
        audio.load(x, audio.Features())
    with pytest.raises(InputError, match="non-empty"):
        audio.load(np.zeros(0), audio.Features(), sampling_rate=16000)
    long = audio.load(np.zeros(16000 * 45, np.float32), audio.Features(), sampling_rate=16000)
    assert len(long.samples) == 480000 and "windowed to its first 30 s" in long.note
    pcm = np.round(tone(0.5) * 32767).astype(np.int16)  # integers scale as a WAV file's
    as_int = audio.load(pcm, audio.Features(), sampling_rate=16000).samples
    assert np.abs(as_int - tone(0.5)).max() < 1e-4
    u8 = (np.round(tone(0.5) * 127) + 128).astype(np.uint8)
    assert (
        np.abs(audio.load(u8, audio.Features(), sampling_rate=16000).samples - tone(0.5)).max()
        < 1e-2
    )
    for bad in (np.array([0.0, np.nan]), np.array([np.inf, 0.0])):
        with pytest.raises(InputError, match="NaN or infinite"):
            audio.load(bad, audio.Features(), sampling_rate=16000)
    with pytest.raises(InputError, match="20 channels"):
        audio.load(np.zeros((100, 20)), audio.Features(), sampling_rate=16000)


@pytest.mark.reference
def test_flac_through_soundfile(tmp_path):
    soundfile = require("soundfile")
    x = tone(1.0, 22050)
    soundfile.write(tmp_path / "a.flac", x, 22050, subtype="PCM_16")
    a = audio.load(tmp_path / "a.flac", audio.Features())
    assert a.source_rate == 22050
    assert np.abs(a.samples - audio.resample(x, 22050, 16000)).max() < 1e-3


HOSTILE = {
    "empty": "holds no audio samples",
    "zero_bytes": "not audio",
    "truncated": "truncated: the header promises 16,000 frames, the file holds 7,989",
    "header_only": "header is cut short",
    "not_audio": "not audio",
    "riff_not_wave": "not audio",
    "three_hours_claimed": "truncated: the header promises 172,800,000 frames",
    "nan_float": "NaN or infinite",
    "many_channels": "20 channels",
    "silly_rate": "sample rate of 7 Hz",
    "alaw": "WAV format 6",
}


def test_hostile_files_are_one_line_errors(tmp_path):
    files = make_all(tmp_path)
    for name, expected in HOSTILE.items():
        with pytest.raises(InputError) as err:
            audio.load(files[name], audio.Features())
        assert expected in str(err.value) and "\n" not in str(err.value), name


def test_three_hours_are_windowed_without_reading_them(tmp_path):
    import tracemalloc

    files = make_all(tmp_path)
    tracemalloc.start()
    a = audio.load(files["three_hours"], audio.Features())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert a.duration == 3 * 3600 and len(a.samples) == 480000
    assert a.note is not None and "3 h 00 min 00 s long: windowed to its first 30 s" in a.note
    assert peak < 30e6  # one window (480,000 samples), never the 345 MB the header claims


def test_preprocessor_config_is_checked(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    assert audio.load_features(tmp_path).feature_size == 128
    for bad in ({"hop_length": 0}, {"n_fft": "400"}, {"padding_value": float("nan")}):
        with pytest.raises(InputError, match="preprocessor_config.json"):
            audio.features(bad)
