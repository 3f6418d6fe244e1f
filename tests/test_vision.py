"""Vision transformers without a reference: the image front end's arithmetic (hand-checked),
torch's bicubic resize (antialiased: against Pillow's own filter; plain: hand-checked), the patch
convolution as a matmul (against the convolution's sum), untrusted pictures, the API and CLI
wiring, and the overlay's geometry."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

import attn_cli  # noqa: E402
from attn_cli.errors import InputError  # noqa: E402
from attn_cli.images import (  # noqa: E402
    center_crop,
    open_image,
    prepare,
    preprocessor,
    resize_size,
    thumbnail,
    thumbnail_pixels,
)
from attn_cli.models._vision import bicubic_matrix, patch_embed  # noqa: E402
from tests.conftest import invoke  # noqa: E402
from tests.vision_utils import HEADS, INPUT, LAYERS, PATCH, REGISTERS, build_dinov2, picture  # noqa: E402

GRID = INPUT // PATCH
N = 1 + REGISTERS + GRID * GRID


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    return build_dinov2(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "picture.png"
    Image.fromarray(picture()).save(path)
    return path


# --- the image front end ---------------------------------------------------------------------


def test_shortest_edge_resize_keeps_the_aspect_and_truncates_the_long_side():
    # 640 × 480 to a short side of 256: 256 · 640 / 480 = 341.33 -> 341, as transformers
    assert resize_size(640, 480, {"shortest_edge": 256}) == (256, 341)
    assert resize_size(480, 640, {"shortest_edge": 256}) == (341, 256)
    assert resize_size(640, 480, {"height": 224, "width": 200}) == (224, 200)


def test_center_crop_takes_the_middle_and_pads_a_small_picture_with_zeros():
    a = np.arange(25).reshape(5, 5, 1)
    assert center_crop(a, 3, 3)[..., 0].tolist() == [[6, 7, 8], [11, 12, 13], [16, 17, 18]]
    small = np.ones((2, 2, 1), np.uint8)
    out = center_crop(small, 4, 4)[..., 0]
    assert out.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_rescale_and_normalise_by_hand():
    white = Image.fromarray(np.full((2, 2, 3), 255, np.uint8))
    vit = preprocessor({"size": {"height": 2, "width": 2}}, "ViTImageProcessor")
    assert np.all(prepare(white, vit).pixels == 1.0)  # (1 − 0.5) / 0.5
    deit = preprocessor({"size": 2, "crop_size": 2}, "DeiTImageProcessor")  # ImageNet mean and std
    got = prepare(white, deit).pixels[:, 0, 0]
    want = [
        (np.float32(1) - np.float32(m)) / np.float32(s)
        for m, s in [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]
    ]
    assert got.tolist() == pytest.approx(want, abs=0)
    assert prepare(white, deit).pixels.shape == (3, 2, 2)


def test_config_semantics_follow_the_processor_type():
    # an int size is a square for ViT, a shortest edge for CLIP and Bit (get_size_dict)
    assert preprocessor(
        {"image_processor_type": "ViTImageProcessor", "size": 30}, "CLIPImageProcessor"
    ).size == {
        "height": 30,
        "width": 30,
    }
    assert preprocessor(
        {"feature_extractor_type": "CLIPFeatureExtractor", "size": 30}, "ViTImageProcessor"
    ).size == {"shortest_edge": 30}
    assert (
        preprocessor(
            {"image_processor_type": "BitImageProcessorFast"}, "ViTImageProcessor"
        ).processor
        == "BitImageProcessor"
    )
    assert preprocessor({}, "SiglipImageProcessor").resample == 3
    for bad, message in (
        ({"size": {"longest_edge": 3}}, "shortest_edge"),
        ({"image_std": [0, 1, 1]}, "zero"),
        ({"resample": 9}, "not a PIL filter"),
        ({"image_mean": "x"}, "not three numbers"),
    ):
        with pytest.raises(InputError, match=message):
            preprocessor(bad, "ViTImageProcessor")


def test_transparent_pixels_become_white():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red, then fully transparent black
    img = open_image(Image.fromarray(rgba, "RGBA"))
    assert np.asarray(img).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_the_thumbnail_round_trips_without_pillow():
    seen = picture(32, 32)
    thumb = thumbnail(seen, (4, 4))
    pixels = thumbnail_pixels(thumb)
    assert pixels.shape == (16, 16, 3)
    # BOX filter at 2 × 2: each thumbnail pixel is the rounded mean of its block
    assert abs(int(pixels[0, 0, 0]) - seen[:2, :2, 0].mean()) <= 0.5
    with pytest.raises(InputError, match="malformed"):
        thumbnail_pixels(thumb | {"height": 15})


# --- torch's bicubic resize of position tables ----------------------------------------------


@pytest.mark.parametrize("n_in, n_out", [(37, 16), (4, 9), (16, 16), (7, 5), (10, 3)])
def test_antialiased_bicubic_is_pillows_filter(n_in, n_out):
    # torch's antialiased bicubic was written to match Pillow's (a = −0.5, widened support)
    x = np.random.default_rng(n_in).standard_normal((1, n_in)).astype(np.float32)
    ref = np.asarray(Image.fromarray(x, "F").resize((n_out, 1), Image.BICUBIC))[0]
    assert np.abs(bicubic_matrix(n_in, n_out, antialias=True) @ x[0] - ref).max() < 1e-6


def test_plain_bicubic_by_hand():
    # [1, 2] to 4 samples, align_corners=False, a = −0.75, edges clamped: source positions
    # −0.25, 0.25, 0.75, 1.25; at −0.25 the taps are x(−2..1) -> 1, 1, 1, 2 with weights
    # cc2(1.75) = −0.03515625, cc1(0.75) = 0.26171875, cc1(0.25) = 0.87890625, cc2(1.25) = −0.10546875
    m = bicubic_matrix(2, 4, antialias=False)
    assert (m @ np.array([1.0, 2.0])).tolist() == pytest.approx(
        [0.89453125, 1.2265625, 1.7734375, 2.10546875], abs=1e-12
    )
    assert np.array_equal(bicubic_matrix(5, 5, antialias=False), np.eye(5))


def test_patch_embedding_matmul_is_the_strided_convolution():
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, 13, 17)).astype(np.float32)  # 6 × 8 patches, edges dropped
    kernel = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    w = {"p.weight": kernel, "p.bias": bias}
    out, grid = patch_embed(w, "p", pixels, 2)  # type: ignore[arg-type]
    assert grid == (6, 8)
    for r in range(6):
        for c in range(8):
            window = pixels[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            conv = np.einsum("dchw,chw->d", kernel, window) + bias
            np.testing.assert_allclose(out[r * 8 + c], conv, rtol=1e-5, atol=1e-5)


# --- untrusted pictures ----------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width × height (CRC fixed up)."""
    buf = io.BytesIO()
    Image.fromarray(picture(4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(20_000, 20_000))  # 400 M pixels: never decoded
    with pytest.raises(InputError, match="decompression-bomb limit") as e:
        open_image(bomb)
    assert "\n" not in str(e.value)


def test_truncated_and_non_image_files_are_one_line_errors(tmp_path, png):
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:80])
    junk = tmp_path / "junk.jpg"
    junk.write_text("not a picture")
    for path, message in (
        (cut, "cannot be decoded"),
        (junk, "not an image"),
        (tmp_path / "no.png", "no such"),
    ):
        with pytest.raises(InputError, match=message) as e:
            open_image(path)
        assert "\n" not in str(e.value)


def test_arrays_are_checked():
    for bad in (
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ):
        with pytest.raises(InputError, match="image"):
            open_image(bad)
    with pytest.raises(InputError, match="takes an image file"):
        open_image(42)


def test_a_long_strip_is_refused_before_it_is_resized_by_its_short_side(dino, monkeypatch):
    m = attn_cli.load_model(dino)
    strip = np.zeros((1, 20_000, 3), np.uint8)  # short side 1 -> 36: 720,000 × 36 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    with pytest.raises(InputError, match="resized to 720000 × 36"):
        m.trace(image=strip)


def test_a_one_pixel_picture_runs(dino):
    t = attn_cli.load_model(dino).trace(image=np.full((1, 1, 3), 200, np.uint8))
    assert t.attention().shape == (LAYERS, HEADS, N, N)
    assert np.allclose(t.attention().sum(-1), 1, atol=1e-5)


# --- the API and the CLI ---------------------------------------------------------------------


def test_a_picture_traces_as_patches_with_their_coordinates(dino, png):
    m = attn_cli.load_model(dino)
    t = m.trace(str(png))
    assert t.tokens[:4] == ["[CLS]", "reg0", "reg1", "p(0,0)"]
    assert t.tokens[-1] == f"p({GRID - 1},{GRID - 1})"
    assert t.attention().shape == (LAYERS, HEADS, N, N)
    axis = t.axes["tokens"]
    assert axis.kind == "patches" and axis.coords is not None
    assert axis.coords[1 + REGISTERS + GRID + 2] == (1.0, 2.0)
    assert t.config["image"]["grid"] == [GRID, GRID]
    assert t.config["image"]["registers"] == [1, 2]
    # the same pixels as an array or a PIL image give the same trace
    same = m.trace(image=picture())
    np.testing.assert_array_equal(same.attention(), t.attention())
    np.testing.assert_array_equal(m.trace(image=Image.open(png)).attention(), t.attention())
    with pytest.raises(InputError, match="give one of them"):
        m.trace("x.png", image=picture())


def test_a_saved_trace_keeps_its_picture(dino, png, tmp_path):
    t = attn_cli.load_model(dino).trace(str(png), layers=1, heads=0)
    t.save(tmp_path / "t.json")
    back = attn_cli.load(tmp_path / "t.json")
    assert back.config["image"] == t.config["image"]


def test_explain_a_picture_on_the_command_line(dino, png):
    r = invoke(["explain", str(png), "--model", str(dino), "--width", "80"])
    assert r.exit_code == 0, r.output
    assert "attention from [CLS] over the 4 × 4 patches" in r.output
    assert "not on the picture: [CLS]" in r.output and "reg1" in r.output
    assert "W = softmax" in r.output  # then the steps
    r = invoke(
        ["explain", str(png), "--model", str(dino), "--position", "1,2", "--view", "overlay"]
    )
    assert r.exit_code == 0 and "attention from patch 1,2" in r.output
    r = invoke(
        ["explain", str(png), "--model", str(dino), "--method", "rollout", "--view", "overlay"]
    )
    assert r.exit_code == 0 and "attention rollout from [CLS]" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--position", "9,9", "--view", "overlay"], "--position 9,9: the patch grid is 4 × 4"),
        (["--position", "x"], "--position x: a picture's patch is ROW,COLUMN"),
    ],
)
def test_cli_errors_are_one_line(dino, png, args, message):
    r = invoke(["explain", str(png), "--model", str(dino), *args])
    assert r.exit_code == 2
    assert message in r.output
    assert "Traceback" not in r.output


def test_a_text_trace_has_no_overlay():
    with pytest.raises(InputError, match="draws on a picture"):
        attn_cli.explain("hi there").show(view="overlay")


# --- the overlay's geometry ------------------------------------------------------------------

CELL = re.compile(r"\x1b\[38;2;(\d+);(\d+);(\d+);48;2;(\d+);(\d+);(\d+)m▀")


def _synthetic(rows: int, cols: int, target: tuple[int, int]) -> attn_cli.Trace:
    """A trace over a flat grey picture whose one map puts all of [CLS]'s attention on one
    patch."""
    from attn_cli.trace import Trace, TraceStep

    n = 1 + rows * cols
    w = np.full((n, n), 1.0 / n)
    w[0] = 0.0
    w[0, 1 + target[0] * cols + target[1]] = 1.0
    grey = np.full((rows * 4, cols * 4, 3), 100, np.uint8)
    tokens = ["[CLS]"] + [f"p({r},{c})" for r in range(rows) for c in range(cols)]
    image = {
        "grid": [rows, cols],
        "prefix": ["[CLS]"],
        "registers": [],
        "thumbnail": thumbnail(grey, (rows, cols)),
    }
    step = TraceStep("W", "w", "", w, tokens, tokens, "weights", 0, 0)
    return Trace("grey", tokens, list(range(n)), {"image": image}, [step])


@pytest.mark.parametrize("target", [(0, 0), (2, 3), (3, 4)])
def test_one_patch_of_attention_lights_exactly_that_patchs_cells(target):
    from rich.console import Console

    rows, cols = 4, 5
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system="truecolor")
    _synthetic(rows, cols, target).show(view="overlay", console=console)
    lines = [CELL.findall(line) for line in buf.getvalue().splitlines()]
    cells = [line for line in lines if line]
    px = 4  # the large picture's pixels per patch at width 80
    assert len(cells) == rows * px // 2 and all(len(line) == cols * px for line in cells)
    colours = {c for line in cells for c in line}
    assert len(colours) == 2  # the lit patch, and the dimmed rest
    lit = {
        (y, x)
        for y, line in enumerate(cells)
        for x, c in enumerate(line)
        if c[:3] != cells[-1 if target[0] == 0 else 0][-1 if target[1] == 0 else 0][:3]
    }
    r, c = target
    assert lit == {(y, x) for y in range(r * 2, r * 2 + 2) for x in range(c * 4, c * 4 + 4)}
    for y, x in lit:  # both half-pixels of a lit cell are lit
        assert cells[y][x][:3] == cells[y][x][3:]


def test_outlier_patches_are_the_long_vectors():
    from attn_cli.vision import outliers

    h = np.ones((1 + 6, 4), np.float32)  # a class token, then six patches of length 2
    h[3] *= 10  # length 20: ten times the median
    h[5] *= 3  # length 6: three times, under the threshold of four
    assert outliers(h, first_patch=1) == [3]


def test_a_saved_picture_keeps_the_pooling_heads_maps(tmp_path):
    fixture = Path(__file__).resolve().parent / "fixtures" / "tiny_vision"
    out = tmp_path / "s.json"
    r = invoke(
        [
            "explain",
            str(fixture / "picture.ppm"),
            "--model",
            str(fixture / "siglip"),
            "--json",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    r = invoke(["show", str(out), "--view", "overlay"])
    assert "attention from the pooling head's probe" in r.output


def test_text_only_methods_are_refused_for_a_picture(dino, png):
    r = invoke(["explain", str(png), "--model", str(dino), "--method", "detectors"])
    assert r.exit_code == 2 and "detectors needs text input" in r.output
    r = invoke(["explain", str(png), "--model", str(dino), "--method", "lens"])
    assert r.exit_code == 2 and "needs a language-model head" in r.output


def test_the_overlay_position_from_python(dino, png):
    from rich.console import Console

    t = attn_cli.load_model(dino).trace(str(png), layers=1, heads=0)
    console = Console(file=io.StringIO(), width=80)
    t.show(view="overlay", console=console, position=(1, 2))
    assert "attention from patch 1,2" in console.file.getvalue()
    with pytest.raises(InputError, match=r"^position='1,2': takes a patch's \(row, column\)$"):
        t.show(view="overlay", console=console, position="1,2")
    with pytest.raises(InputError, match=r"the patch grid is 4 × 4"):
        t.show(view="overlay", console=console, position=(4, 0))


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_hidden_layers", "2"),
        ("num_attention_heads", 0),
        ("layer_norm_eps", -1e-6),
        ("hidden_size", True),
        ("qkv_bias", "yes"),
        ("num_register_tokens", -1),
    ],
)
def test_bad_vision_config_values_are_one_line_errors(tmp_path, key, value):
    """A vision config's values are checked like a text family's: one line naming the key."""
    import json
    import shutil

    fixtures = Path(__file__).resolve().parent / "fixtures" / "tiny_vision"
    model = tmp_path / "model"
    shutil.copytree(fixtures / "dinov2_registers", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[key] = value
    (model / "config.json").write_text(json.dumps(cfg))
    r = invoke(["explain", str(fixtures / "picture.ppm"), "--model", str(model)])
    assert r.exit_code == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in r.stderr
