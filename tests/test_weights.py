"""Checkpoint weights (attn_cli.models.weights) and checkpoint resolution (checkpoint.py).

Safetensors files are written by hand here (8-byte header length, JSON header, raw bytes), so
the reader is checked against the format itself, not against another reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.models import checkpoint, weights
from attn_cli.models.weights import SafetensorsWeights, bf16_to_f32, convert_into, matmul_rows_t
from tests.conftest import ROOT, require

FIXTURES = ROOT / "tests" / "fixtures"


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """name -> (dtype, shape, raw little-endian bytes)"""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def bf16_bytes(values: list[float]) -> bytes:
    """Values exactly representable in bfloat16, stored as the top 2 bytes of each float32."""
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def test_bf16_is_the_top_half_of_a_float32():
    values = [1.0, -2.5, 0.15625, 2.0**127, -(2.0**-126), 0.0, -0.0, float("inf")]
    f32 = np.array(values, dtype=np.float32)
    u16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf16_to_f32(u16), f32)
    # a hand-checked pattern: 0x3FC0 = sign 0, exponent 127, mantissa .1 (binary) = 1.5
    assert bf16_to_f32(np.array([0x3FC0], dtype=np.uint16))[0] == 1.5


def test_reads_bf16_f16_f32_exactly_with_the_prefix_removed(tmp_path):
    bf = [1.0, -2.5, 0.15625, 1024.0, -0.0078125, 96.0]
    half = np.array([1.0, 65504.0, 5.960464477539063e-08, -0.333251953125], dtype="<f2")
    f32 = np.arange(6, dtype="<f4") / 7
    write_safetensors(
        tmp_path / "model.safetensors",
        {
            "model.embed_tokens.weight": ("BF16", (3, 2), bf16_bytes(bf)),
            "model.norm.weight": ("F16", (4,), half.tobytes()),
            "lm_head.weight": ("F32", (2, 3), f32.tobytes()),
            "model.step": ("I64", (1,), struct.pack("<q", 7)),
        },
    )
    w = SafetensorsWeights(tmp_path, "embed_tokens.weight")
    assert sorted(w) == ["embed_tokens.weight", "lm_head.weight", "norm.weight", "step"]
    emb = w["embed_tokens.weight"]
    assert emb.dtype == np.float32 and emb.shape == (3, 2)
    assert emb.tolist() == [[1.0, -2.5], [0.15625, 1024.0], [-0.0078125, 96.0]]
    assert w["norm.weight"].tolist() == [1.0, 65504.0, 5.960464477539063e-08, -0.333251953125]
    np.testing.assert_array_equal(w["lm_head.weight"], f32.reshape(2, 3))
    assert w.dtype("embed_tokens.weight") == "BF16" and w.shape("lm_head.weight") == (2, 3)
    np.testing.assert_array_equal(w.rows("embed_tokens.weight", [2, 0, 2]), emb[[2, 0, 2]])
    with pytest.raises(InputError, match="not a floating-point"):
        w["step"]
    with pytest.raises(InputError, match="missing tensor 'nope'"):
        w["nope"]
    with pytest.raises(InputError, match="outside"):
        w.rows("embed_tokens.weight", [3])
    renamed = SafetensorsWeights(tmp_path, "embed_tokens.weight", rename=lambda n: n.upper())
    assert "NORM.WEIGHT" in renamed


def test_a_sharded_checkpoint_is_one_mapping(tmp_path):
    a = np.arange(8, dtype="<f4").reshape(4, 2)
    write_safetensors(
        tmp_path / "model-00001-of-00002.safetensors",
        {"model.embed_tokens.weight": ("F32", (4, 2), a.tobytes())},
    )
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors",
        {"model.norm.weight": ("BF16", (2,), bf16_bytes([2.0, 0.5]))},
    )
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for source in (tmp_path, tmp_path / "model.safetensors.index.json"):
        w = SafetensorsWeights(source, "embed_tokens.weight")
        np.testing.assert_array_equal(w["embed_tokens.weight"], a)
        assert w["norm.weight"].tolist() == [2.0, 0.5]
        assert w.parameters() == 10
    index["weight_map"]["model.x"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="elsewhere"):
        SafetensorsWeights(tmp_path, "embed_tokens.weight")


def test_lm_head_in_row_blocks_equals_the_full_product(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(37, 8)).astype(np.float32)
    bits = (table.view(np.uint32) >> 16).astype("<u2")  # truncate to bf16
    write_safetensors(
        tmp_path / "model.safetensors", {"embed_tokens.weight": ("BF16", (37, 8), bits.tobytes())}
    )
    w = SafetensorsWeights(tmp_path, "embed_tokens.weight")
    full = (bits.astype(np.uint32) << 16).view(np.float32)
    h = rng.normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(
        matmul_rows_t(w, "embed_tokens.weight", h, block=5), h @ full.T, rtol=1e-6, atol=1e-6
    )
    assert [start for start, _ in w.row_blocks("embed_tokens.weight", 16)] == [0, 16, 32]


def test_convert_into_is_bit_identical_to_the_reference_on_every_pattern():
    bits = np.arange(65536, dtype="<u2")
    ref = bf16_to_f32(bits)
    # a strided block (every other column of a 2-D view), as a block of a mapping is read
    src = np.stack([bits, bits[::-1]], axis=1).reshape(512, 256)[:, ::2]
    out = np.empty(src.shape, dtype=np.float32)
    assert not convert_into(src, "BF16", out)  # the patterns include NaN and ±inf
    np.testing.assert_array_equal(out.view(np.uint32), bf16_to_f32(src).view(np.uint32))
    small = np.abs(ref) < 1e30  # finite, and their sum does not overflow float32
    out = np.empty(int(small.sum()), dtype=np.float32)
    assert convert_into(bits[small], "BF16", out)
    np.testing.assert_array_equal(out.view(np.uint32), ref[small].view(np.uint32))
    half = np.arange(65536, dtype="<u2").view("<f2")
    out = np.empty(half.shape, dtype=np.float32)
    assert not convert_into(half, "F16", out)
    np.testing.assert_array_equal(out, half.astype(np.float32))


def test_lm_head_converted_in_cache_blocks_is_bit_identical_for_the_predicted_row(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(weights, "FUSED_BYTES", 16 * 4 * 64)  # 16-row blocks: many of them
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1001, 64)).astype(np.float32)
    bits = (table.view(np.uint32) >> 16).astype("<u2")
    write_safetensors(
        tmp_path / "model.safetensors",
        {"embed_tokens.weight": ("BF16", bits.shape, bits.tobytes())},
    )
    w = SafetensorsWeights(tmp_path, "embed_tokens.weight")
    full = bf16_to_f32(bits)
    h = rng.normal(size=(1, 64)).astype(np.float32)
    for block in (100, 4096):  # mapping released every 96 rows, or once
        got = matmul_rows_t(w, "embed_tokens.weight", h, block=block)
        np.testing.assert_array_equal(got, h @ full.T)
        np.testing.assert_array_equal(
            got,
            np.concatenate([h @ b.T for _, b in w.row_blocks("embed_tokens.weight", 300)], axis=1),
        )
    bits[700, 3] = 0x7FC0  # NaN: refused as reading the tensor refuses it
    write_safetensors(
        tmp_path / "model.safetensors",
        {"embed_tokens.weight": ("BF16", bits.shape, bits.tobytes())},
    )
    w = SafetensorsWeights(tmp_path, "embed_tokens.weight")
    with pytest.raises(InputError, match=r"embed_tokens.weight holds nan at \[700, 3\]"):
        matmul_rows_t(w, "embed_tokens.weight", h)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:5], "shorter than a safetensors header"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "does not fit"),
        (lambda b: b[:-3], "beyond the end"),
        (lambda b: b[:8] + b"{not json" + b[17:], "not a readable safetensors"),
    ],
)
def test_damaged_files_are_refused_in_one_line(tmp_path, damage, message):
    write_safetensors(
        tmp_path / "model.safetensors", {"embed_tokens.weight": ("F32", (2, 2), bytes(16))}
    )
    f = tmp_path / "model.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(InputError, match=message):
        SafetensorsWeights(tmp_path, "embed_tokens.weight")


@pytest.mark.reference
def test_bf16_conversion_agrees_with_torch_on_every_bit_pattern():
    torch = require("torch")
    bits = np.arange(65536, dtype=np.uint16)
    ours = bf16_to_f32(bits)
    ref = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))  # NaNs included


def test_sharded_checkpoints_resolve_and_are_listed_with_family_and_size(tmp_path, monkeypatch):
    ckpt = checkpoint.resolve(str(FIXTURES / "tiny_gemma3"))
    assert ckpt.family.name == "gemma" and ckpt.weights_path == FIXTURES / "tiny_gemma3"
    listed = checkpoint._describe("tiny", FIXTURES / "tiny_llama", "hf-cache")
    w = SafetensorsWeights(FIXTURES / "tiny_llama", "embed_tokens.weight")
    count = w.parameters()
    assert 10_000 < count < 100_000
    assert (listed.family, listed.params, listed.dtype, listed.problem) == (
        "llama",
        count,
        "BF16",
        None,
    )
    assert listed.shape == "2 layers × 4 heads (2 key/value heads)"
    assert listed.size_bytes == (FIXTURES / "tiny_llama" / "model.safetensors").stat().st_size
    gemma = checkpoint._describe("g", FIXTURES / "tiny_gemma3", "hf-cache")
    assert gemma.family == "gemma (gemma3_text)"
    # the hub cache layout: models--org--name/snapshots/<rev>/
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    snap.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(FIXTURES / "tiny_gemma3", snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    found = {f.name: f for f in checkpoint.discover()}
    assert found["org/tiny"].problem is None and found["org/tiny"].family == "gemma (gemma3_text)"
    assert checkpoint.resolve("org/tiny").path == snap


def test_a_directory_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(InputError, match="no model.safetensors"):
        checkpoint.resolve(str(tmp_path))
    (tmp_path / "pytorch_model.bin.index.json").write_text("{}")
    with pytest.raises(InputError, match="pickle"):
        checkpoint.resolve(str(tmp_path))


MEMORY_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from attn_cli.models.registry import family_for
from attn_cli.models.weights import SafetensorsWeights
d = Path(sys.argv[1])
cfg = json.loads((d / "config.json").read_text())
fam = family_for("llama")
def hwm():  # this process's peak RSS in KiB (ru_maxrss would include the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
base = hwm()
if sys.argv[2] == "run":
    w = SafetensorsWeights(d, fam.anchor)
    fam.check(w, cfg)
    x = fam.embed(w, list(range(64)), cfg)
    for steps in fam.layers(w, x, cfg):
        x = steps.out
    logits = fam.logits(w, fam.final(w, x, cfg)[-1:], cfg)
    assert np.isfinite(logits).all()
print(json.dumps([base, hwm()]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_peak_memory_is_about_one_layer_not_the_whole_model(tmp_path):
    """A 16-layer bf16 Llama (whole model 205 MB in float32, one layer 12.6 MB): running every
    layer and the LM head raises the peak RSS by far less than the model's float32 size."""
    import subprocess
    import sys

    d, heads, kv, hd, inter, vocab, layers = 512, 8, 2, 64, 1536, 16000, 16
    cfg = {
        "model_type": "llama", "hidden_size": d, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "max_position_embeddings": 512,
    }  # fmt: skip
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (heads * hd, d),
            p + "self_attn.k_proj.weight": (kv * hd, d),
            p + "self_attn.v_proj.weight": (kv * hd, d),
            p + "self_attn.o_proj.weight": (d, heads * hd),
            p + "mlp.gate_proj.weight": (inter, d),
            p + "mlp.up_proj.weight": (inter, d),
            p + "mlp.down_proj.weight": (d, inter),
        }
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * np.float32(0.05)
        if name.endswith("norm.weight"):
            x = np.ones_like(x)
        tensors[name] = ("BF16", shape, (x.view(np.uint32) >> 16).astype("<u2").tobytes())
    write_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    whole = 4 * sum(int(np.prod(s)) for s in shapes.values())
    layer = 4 * sum(int(np.prod(s)) for n, s in shapes.items() if n.startswith("model.layers.0."))

    def peak(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(tmp_path), mode],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        _, end = json.loads(out.stdout)
        return end * 1024

    idle, busy = peak("idle"), peak("run")
    grew = busy - idle
    assert whole > 200e6 and layer < 13e6
    assert grew < 0.35 * whole, (
        f"peak grew by {grew / 1e6:.0f} MB; the model is {whole / 1e6:.0f} MB"
    )


def test_entry_product_multiplies_one_expert_converted_a_few_columns_at_a_time(
    tmp_path, monkeypatch
):
    """SafetensorsWeights.entry_product: x @ entry i of a stacked bf16 tensor, converted in
    blocks of 16 columns (3 blocks, the last one short), equal to the product with the exactly
    converted matrix (float32 rounding); NaN in it is refused by name."""
    monkeypatch.setattr(weights, "FUSED_BYTES", 16 * 4 * 4)
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4, 40)).astype(np.float32)
    bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    bits[2, 1, 33] = 0x7FC0  # NaN, in the last block
    header = {
        "model.embed_tokens.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "model.experts": {"dtype": "BF16", "shape": [3, 4, 40], "data_offsets": [16, 976]},
    }
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (tmp_path / "model.safetensors").write_bytes(
        struct.pack("<Q", len(head)) + head + bytes(16) + bits.tobytes()
    )
    w = SafetensorsWeights(tmp_path, "embed_tokens.weight")
    want = bf16_to_f32(bits)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for i in (0, 1):
        got = w.entry_product("experts", i, x)
        np.testing.assert_allclose(got, x @ want[i], rtol=1e-6, atol=1e-6)
        assert not np.allclose(got, x @ want[1 - i])
    with pytest.raises(InputError, match=r"experts\[2\] holds nan at \[1, 33\]"):
        w.entry_product("experts", 2, x)
