"""Dequantisation against ggml itself: data quantised by ggml's C reference quantisers
(libggml-base from llama-cpp-python, called through ctypes), read back by attn_cli.gguf,
must equal ggml's own C dequantisation bit for bit, for every supported type."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import require

# type -> (ggml type id, block size, bytes per block)
TYPES = {
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}
DEQUANTIZE_ONLY = {"MXFP4": (39, 32, 17)}  # no quantize_row_*_ref name pattern: own test


WITH_OFFSET = {"Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K"}


def ggml_base() -> ctypes.CDLL:
    """llama-cpp-python's libggml-base, whose quantize_row_*_ref / dequantize_row_* are the
    C code llama.cpp runs."""
    llama_cpp = require("llama_cpp")
    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    found = sorted(lib.glob("libggml-base.so*")) + sorted(lib.glob("libggml-base*.dylib"))
    if not found:
        pytest.fail(f"libggml-base not found in {lib}")
    return ctypes.CDLL(str(found[0]))


def ggml_quantize(lib: ctypes.CDLL, x: np.ndarray, t: str) -> np.ndarray:
    """float32 [rows, n] -> raw bytes [rows, row_bytes] as ggml writes them."""
    _, block, size = TYPES[t]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, n // block * size), dtype=np.uint8)
    fp = x.ctypes.data_as(ctypes.c_void_p)
    op = out.ctypes.data_as(ctypes.c_void_p)
    if t == "F16":
        fn = lib.ggml_fp32_to_fp16_row
    elif t == "BF16":
        fn = lib.ggml_fp32_to_bf16_row_ref
    else:
        fn = getattr(lib, f"quantize_row_{t[:2].lower()}{t[2:]}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(fp, op, x.size)
    return out


def ggml_dequantize(lib: ctypes.CDLL, raw: np.ndarray, t: str, n: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.zeros((raw.shape[0], n), dtype=np.float32)
    if t == "F16":
        fn = lib.ggml_fp16_to_fp32_row
    elif t == "BF16":
        fn = lib.ggml_bf16_to_fp32_row
    elif t in DEQUANTIZE_ONLY:
        fn = getattr(lib, f"dequantize_row_{t.lower()}")
    else:
        fn = getattr(lib, f"dequantize_row_{t[:2].lower()}{t[2:]}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(raw.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), out.size)
    return out


def write_raw(path: Path, tensors: dict[str, tuple[str, np.ndarray, int]]) -> Path:
    """A GGUF file with raw tensors: name -> (type, bytes [rows, row_bytes], row length)."""
    gguf = require("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (t, raw, _n) in tensors.items():
        w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(TYPES[t][0]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.reference
def test_every_type_equals_ggml(tmp_path):
    from attn_cli.gguf.reader import read_tensor

    lib = ggml_base()
    rng = np.random.default_rng(7)
    tensors = {}
    refs = {}
    for t in TYPES:
        n = 512
        # heavy-tailed values with a few outliers, as real weights have
        x = (rng.standard_t(4, size=(5, n)) * 0.05).astype(np.float32)
        x[0, :7] = [3.0, -2.5, 0.0, 1e-4, -1e-4, 40.0, -0.0]
        raw = ggml_quantize(lib, x, t)
        tensors[f"w.{t}"] = (t, raw, n)
        refs[t] = ggml_dequantize(lib, raw, t, n)
        assert np.abs(refs[t] - x).max() < 2.0 + 0.1 * np.abs(x).max()  # sane quantisation
    path = write_raw(tmp_path / "types.gguf", tensors)
    for t, ref in refs.items():
        got = read_tensor(path, f"w.{t}")
        assert got.dtype == np.float32 and got.shape == ref.shape, t
        if t in WITH_OFFSET:
            # y = d * q + m: a C compiler may fuse it into one rounding (FMA); allow one unit
            # in the last place of the largest value (bit-identical on the dev machine)
            assert np.abs(got - ref).max() <= np.spacing(np.abs(ref).max()), t
        else:
            np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=t)


def test_unsupported_type_is_refused_by_name(tmp_path):
    """An IQ4_NL tensor in a model: one InputError naming the type, before any work."""
    from attn_cli.gguf import open_gguf
    from tests.test_gguf_writer import TINY, llama_shapes, random_state, write_gguf

    gguf = require("gguf")
    path = write_gguf(tmp_path / "m.gguf", "llama", TINY, random_state(llama_shapes(TINY)))
    # copy the file with one tensor replaced by a raw IQ4_NL tensor of the same shape
    r = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(k, v)
        else:
            w.add_key_value(k, v, vt)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name == "blk.0.ffn_up.weight":
            continue
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.add_tensor(
        "blk.0.ffn_up.weight",
        np.zeros((64, 18), dtype=np.uint8),  # 64 rows of 32 values: one 18-byte block each
        raw_dtype=gguf.GGMLQuantizationType.IQ4_NL,
    )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match=r"IQ4_NL \(e\.g\. blk\.0\.ffn_up\.weight\)"):
        open_gguf(tmp_path / "iq.gguf")


@pytest.mark.reference
@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1"])
def test_numpy_fast_paths_equal_gguf_package(t):
    """The hand-written numpy paths against gguf-py's own dequantisation, bit for bit, on
    ggml-quantised data with extreme values (zero blocks, huge and tiny scales)."""
    gguf = require("gguf")
    from attn_cli.gguf.header import GGML_TYPES, TensorInfo
    from attn_cli.gguf.reader import dequantize_rows

    lib = ggml_base()
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((7, 96)) * np.logspace(-6, 4, 7)[:, None]).astype(np.float32)
    x[3] = 0.0
    raw = ggml_quantize(lib, x, t)
    tid = TYPES[t][0]
    info = TensorInfo("w", (96, 7), tid, 0, raw.size)
    assert GGML_TYPES[tid][0] == t
    got = dequantize_rows(raw, info)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(tid))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(
        got.view(np.uint32), ggml_dequantize(lib, raw, t, 96).view(np.uint32)
    )


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1"])
def test_numpy_types_equal_gguf_py_across_chunks(t):
    """attn_cli.gguf.quants works a chunk of blocks at a time: tensors smaller than a chunk,
    exactly one, and a few with a partial last chunk equal gguf-py's dequantisation bit for
    bit (quantised by gguf-py, whose quantisers are ggml's reference ones)."""
    gguf = require("gguf")
    from gguf.quants import dequantize, quantize

    from attn_cli.gguf import quants

    kind = gguf.GGMLQuantizationType[t]
    rng = np.random.default_rng(3)
    per_chunk = quants.CHUNK * quants.QK
    for rows, n in [(1, 32), (3, 96), (quants.CHUNK, 32), (2, per_chunk), (3, per_chunk + 64)]:
        x = (rng.standard_t(4, size=(rows, n)) * 0.05).astype(np.float32)
        x[0, :3] = [3.0, -0.0, 40.0]
        raw = quantize(x, kind)
        ref = np.asarray(dequantize(raw, kind), dtype=np.float32)
        got = quants.DEQUANTIZE[t](raw)
        assert got.shape == ref.shape == (rows, n)
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=t)


@pytest.mark.reference
def test_mxfp4_equals_ggml_and_gguf_py():
    """MXFP4 (gpt-oss's experts): ggml's C quantiser and dequantiser against attn-cli's, bit
    for bit, and gguf-py's numpy dequantisation of the same bytes, every exponent byte
    included (0 and 1 give subnormal scales)."""
    gguf = require("gguf")
    from gguf.quants import dequantize

    from attn_cli.gguf import quants

    lib = ggml_base()
    rng = np.random.default_rng(11)
    x = (rng.standard_t(4, size=(4, 1024)) * 0.05).astype(np.float32)
    x[0, :5] = [3.0, -0.0, 40.0, 1e-30, -6.0]
    raw = np.zeros((4, 32 * 17), dtype=np.uint8)
    quantize = lib.quantize_row_mxfp4_ref
    quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    quantize.restype = None
    quantize(x.ctypes.data_as(ctypes.c_void_p), raw.ctypes.data_as(ctypes.c_void_p), x.size)
    # every exponent byte below 255 (255 overflows to inf for the larger codes), random codes
    blocks = raw.reshape(-1, 17)
    blocks[:, 0] = np.arange(blocks.shape[0]) % 255
    blocks[: blocks.shape[0] // 2, 1:] = rng.integers(0, 256, (blocks.shape[0] // 2, 16))
    ref = ggml_dequantize(lib, raw, "MXFP4", 1024)
    got = quants.mxfp4(raw)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    py = np.asarray(dequantize(raw, gguf.GGMLQuantizationType.MXFP4), dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), py.view(np.uint32))


def test_mxfp4_hub_layout_equals_transformers():
    """The hub's MXFP4 blocks and scales (gpt-oss safetensors) give transformers' own
    dequantised experts (convert_moe_packed_tensors), transposed to its [E, in, out]."""
    torch = require("torch")
    require("transformers")
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from attn_cli.gguf import quants

    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, (3, 6, 4, 16), dtype=np.uint8)  # [E, out, G, 16]
    scales = rng.integers(100, 150, (3, 6, 4), dtype=np.uint8)
    ref = convert_moe_packed_tensors(
        torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32
    ).numpy()
    got = quants.mxfp4_pairs(blocks, scales)
    assert got.shape == (3, 6, 128) and ref.shape == (3, 128, 6)
    np.testing.assert_array_equal(got.transpose(0, 2, 1), ref)  # −0.0 == +0.0
