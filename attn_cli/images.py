"""Pictures in: decode an image (Pillow), prepare it exactly as the checkpoint's image processor
does, and keep a small thumbnail for the views.

The preparation follows `preprocessor_config.json` as transformers' (slow, PIL-based) image
processors do — ViTImageProcessor, DeiTImageProcessor, BitImageProcessor (DINOv2),
CLIPImageProcessor, SiglipImageProcessor:

  convert to RGB → resize (Pillow, the config's `resample` filter; `size` is either
  {"shortest_edge": s}: the short side becomes s, the long side int(s · long / short), or
  {"height", "width"}: exactly that) → centre crop (`crop_size`, zero padding where the picture
  is smaller) → rescale (× 1/255, computed in float64 then cast to float32) → normalise
  ((x − mean) / std in float32) → channels first (3, H, W).

Images are untrusted input: the header is read first and a picture larger than Pillow's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is refused before it is decoded; a
truncated or unreadable file is one line of error.
"""

from __future__ import annotations

import base64
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli.errors import InputError, opt

if TYPE_CHECKING:
    from PIL.Image import Image

PREPROCESSOR_CONFIG = "preprocessor_config.json"

# transformers' constants (image_utils.py).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL's resampling filters by the numbers the configs store (PILImageResampling).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
BILINEAR, BICUBIC = 2, 3

# Each processor's defaults, for what its preprocessor_config.json leaves out. `square`: an
# integer `size` means height = width = size (else: the shortest edge).
PROCESSORS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": {
        "size": {"height": 224, "width": 224},
        "resample": BILINEAR,
        "do_center_crop": False,
        "mean": IMAGENET_STANDARD_MEAN,
        "std": IMAGENET_STANDARD_STD,
        "square": True,
    },
    "DeiTImageProcessor": {
        "size": {"height": 256, "width": 256},
        "resample": BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "square": True,
    },
    "BitImageProcessor": {
        "size": {"shortest_edge": 224},
        "resample": BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "square": False,
    },
    "CLIPImageProcessor": {
        "size": {"shortest_edge": 224},
        "resample": BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "square": False,
    },
    "SiglipImageProcessor": {
        "size": {"height": 224, "width": 224},
        "resample": BICUBIC,
        "do_center_crop": False,
        "mean": IMAGENET_STANDARD_MEAN,
        "std": IMAGENET_STANDARD_STD,
        "square": True,
    },
}
# image_processor_type (or the older feature_extractor_type) -> the processor it is (the
# PROCESSORS key, named after transformers' image processor class).
PROCESSOR_TYPES = {
    "ViTImageProcessor": "ViTImageProcessor",
    "ViTFeatureExtractor": "ViTImageProcessor",
    "DeiTImageProcessor": "DeiTImageProcessor",
    "DeiTFeatureExtractor": "DeiTImageProcessor",
    "BitImageProcessor": "BitImageProcessor",
    "CLIPImageProcessor": "CLIPImageProcessor",
    "CLIPFeatureExtractor": "CLIPImageProcessor",
    "SiglipImageProcessor": "SiglipImageProcessor",
}

# The thumbnail kept in a trace for the views: this many pixels per patch each way, at most
# THUMBNAIL_MAX on a side.
THUMBNAIL_PER_PATCH = 4
THUMBNAIL_MAX = 128


@dataclass(frozen=True)
class Preprocessor:
    """How a checkpoint's pictures are prepared (see the module docstring)."""

    processor: str  # a PROCESSORS key: whose semantics and defaults apply
    do_resize: bool
    size: dict[str, int]  # {"shortest_edge": s} or {"height": h, "width": w}
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int] | None  # {"height": h, "width": w}
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable, for the trace's config."""
        return {
            "processor": self.processor,
            "resize": self.size if self.do_resize else None,
            "resample": RESAMPLE_NAMES.get(self.resample, str(self.resample)),
            "center_crop": self.crop_size if self.do_center_crop else None,
            "rescale": self.rescale_factor if self.do_rescale else None,
            "mean": list(self.mean) if self.do_normalize else None,
            "std": list(self.std) if self.do_normalize else None,
        }


def _size_dict(value: Any, square: bool, what: str) -> dict[str, int]:
    """transformers' get_size_dict: an int is a square (or a shortest edge); a dict is checked."""
    if isinstance(value, bool) or not isinstance(value, int | dict):
        raise InputError(f"{PREPROCESSOR_CONFIG}: {what} {value!r} is not a size")
    if isinstance(value, int):
        value = {"height": value, "width": value} if square else {"shortest_edge": value}
    keys = set(value) & {"shortest_edge", "height", "width"}
    if keys not in ({"shortest_edge"}, {"height", "width"}):
        raise InputError(
            f"{PREPROCESSOR_CONFIG}: {what} {value!r}: expected shortest_edge, or height and width"
        )
    out = {k: value[k] for k in keys}
    if any(
        isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8192 for v in out.values()
    ):
        raise InputError(f"{PREPROCESSOR_CONFIG}: {what} {value!r}: sizes are 1 to 8192 pixels")
    return out


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * 3
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    ):
        raise InputError(f"{PREPROCESSOR_CONFIG}: {what} {value!r} is not three numbers")
    return (float(value[0]), float(value[1]), float(value[2]))


def preprocessor(
    settings: dict[str, Any], default: str, image_size: int | None = None
) -> Preprocessor:
    """The Preprocessor of a preprocessor_config.json's `settings` ({} when the checkpoint has
    none: the `default` processor's defaults, resized to the model's `image_size`)."""
    kind = str(settings.get("image_processor_type") or settings.get("feature_extractor_type") or "")
    # transformers 5 also names its backends: CLIPImageProcessorFast, CLIPImageProcessorPil
    kind = PROCESSOR_TYPES.get(kind.removesuffix("Fast").removesuffix("Pil"), default)
    base = PROCESSORS[kind]
    if not settings and image_size is not None:
        base = base | {
            "size": {"height": image_size, "width": image_size},
            "do_center_crop": False,
        }
    square = bool(base["square"])

    def get(key: str, fallback: Any) -> Any:
        value = settings.get(key)
        return fallback if value is None else value

    std = _triple(get("image_std", base["std"]), "image_std")
    if any(s == 0 for s in std):
        raise InputError(f"{PREPROCESSOR_CONFIG}: image_std {list(std)} has a zero")
    resample = get("resample", base["resample"])
    if resample not in RESAMPLE_NAMES:
        raise InputError(f"{PREPROCESSOR_CONFIG}: resample {resample!r} is not a PIL filter")
    crop = get("do_center_crop", base["do_center_crop"])
    factor = get("rescale_factor", 1 / 255)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise InputError(f"{PREPROCESSOR_CONFIG}: rescale_factor {factor!r} is not a number")
    return Preprocessor(
        processor=kind,
        do_resize=bool(get("do_resize", True)),
        size=_size_dict(get("size", base["size"]), square, "size"),
        resample=int(resample),
        do_center_crop=bool(crop),
        crop_size=_size_dict(get("crop_size", base.get("crop_size", 224)), True, "crop_size")
        if crop
        else None,
        do_rescale=bool(get("do_rescale", True)),
        rescale_factor=float(factor),
        do_normalize=bool(get("do_normalize", True)),
        mean=_triple(get("image_mean", base["mean"]), "image_mean"),
        std=std,
    )


def read_preprocessor(directory: Path, default: str, image_size: int | None) -> Preprocessor:
    """The checkpoint directory's preprocessor_config.json (the defaults without one)."""
    path = Path(directory) / PREPROCESSOR_CONFIG
    settings: Any = {}
    if path.is_file():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(settings, dict):
            raise InputError(f"{path}: not a JSON object")
    return preprocessor(settings, default, image_size)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InputError(
            "reading images needs Pillow: pip install 'attn-cli[vision]'", exit_code=1
        ) from None
    return Image


def open_image(source: Any, param: str = "image") -> Image:
    """An RGB PIL image from a path, a PIL image, or an (H, W, 3) uint8 array. The size is
    checked against Pillow's decompression-bomb limit before the pixels are decoded."""
    Image = _pil()
    if isinstance(source, Image.Image):
        img = source
        _check_pixels(img.width, img.height, opt(param))
        img.load()
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InputError(
                f"{opt(param)}: an array must be (height, width, 3) uint8 RGB, got "
                f"{arr.shape} {arr.dtype}"
            )
        if 0 in arr.shape:
            raise InputError(f"{opt(param)}: the array {arr.shape} has no pixels")
        _check_pixels(arr.shape[1], arr.shape[0], opt(param))
        img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    elif isinstance(source, str | Path):
        img = _decode(Path(source), Image)
    else:
        raise InputError(
            f"{opt(param)}: takes an image file's path, a PIL image or an (H, W, 3) uint8 array, "
            f"not {type(source).__name__}"
        )
    return to_rgb(img)


def _check_pixels(width: int, height: int, name: str) -> None:
    Image = _pil()
    limit = Image.MAX_IMAGE_PIXELS
    if width < 1 or height < 1:
        raise InputError(f"{name}: the picture is {width} × {height}: it has no pixels")
    if limit is not None and width * height > limit:
        raise InputError(
            f"{name}: the picture is {width:,} × {height:,} pixels, more than Pillow's "
            f"decompression-bomb limit of {limit:,}; scale it down first"
        )


def _decode(path: Path, Image: Any) -> Image:
    name = str(path)
    if not path.is_file():
        raise InputError(f"{name}: no such image file")
    try:
        with warnings.catch_warnings():
            # Over the limit is refused by _check_pixels below, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            _check_pixels(img.width, img.height, name)
            img.load()  # decodes now, so a truncated file fails here
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{name}: larger than Pillow's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels; scale it down first"
        ) from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{name}: the image cannot be decoded ({exc})") from None
    return img


def to_rgb(img: Image) -> Image:
    """transformers' convert_to_rgb: transparent pixels over white, then RGB."""
    Image = _pil()
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    out = Image.new("RGBA", rgba.size, "WHITE")
    out.paste(rgba, (0, 0), rgba)
    return out.convert("RGB")


def resize_size(width: int, height: int, size: dict[str, int]) -> tuple[int, int]:
    """(height, width) after resizing, as transformers' get_resize_output_image_size."""
    if "shortest_edge" in size:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return size["height"], size["width"]


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop of an (H, W, C) array: the middle, zero-padded where the
    picture is smaller than the crop."""
    h, w = pixels.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + height, left : left + width]
    new_h, new_w = max(height, h), max(width, w)
    padded = np.zeros((new_h, new_w, *pixels.shape[2:]), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded[top_pad : top_pad + h, left_pad : left_pad + w] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


@dataclass
class Prepared:
    """A picture ready for a model: pixel values and what the views draw."""

    pixels: np.ndarray  # (3, H, W) float32, normalised
    seen: np.ndarray  # (H, W, 3) uint8: the resized, cropped picture the model sees
    original: tuple[int, int]  # (width, height) as decoded


def prepare(img: Image, p: Preprocessor) -> Prepared:
    """An RGB PIL image through the preprocessor (see the module docstring)."""
    original = (img.width, img.height)
    if p.do_resize:
        height, width = resize_size(img.width, img.height, p.size)
        if height < 1 or width < 1:  # a 1 × 10,000 strip's short side cannot shrink further
            raise InputError(
                f"the picture is {img.width} × {img.height}: too narrow to resize to {p.size}"
            )
        # A long thin strip resized by its short side grows: checked before Pillow allocates it.
        _check_pixels(width, height, f"the picture resized to {width} × {height}")
        img = img.resize((width, height), resample=p.resample)
    seen = np.asarray(img, dtype=np.uint8)
    if p.do_center_crop and p.crop_size is not None:
        seen = center_crop(seen, p.crop_size["height"], p.crop_size["width"])
    x: np.ndarray = seen
    if p.do_rescale:
        x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
    if p.do_normalize:
        x = x.astype(np.float32, copy=False)
        x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    pixels = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(2, 0, 1))
    return Prepared(pixels, np.ascontiguousarray(seen), original)


def thumbnail(seen: np.ndarray, grid: tuple[int, int]) -> dict[str, Any]:
    """The picture the model saw, small, for a trace: THUMBNAIL_PER_PATCH pixels per patch each
    way (at most THUMBNAIL_MAX a side), RGB bytes in base64 (JSON-safe, read without Pillow)."""
    Image = _pil()
    rows, cols = grid
    scale = min(THUMBNAIL_PER_PATCH, THUMBNAIL_MAX / max(rows, cols))
    height, width = max(1, round(rows * scale)), max(1, round(cols * scale))
    small = np.asarray(Image.fromarray(seen, "RGB").resize((width, height), Image.BOX), np.uint8)
    return {
        "height": height,
        "width": width,
        "rgb": base64.b64encode(np.ascontiguousarray(small).tobytes()).decode("ascii"),
    }


def thumbnail_pixels(thumb: dict[str, Any]) -> np.ndarray:
    """A stored thumbnail back as (height, width, 3) uint8; InputError if it is malformed."""
    try:
        h, w = int(thumb["height"]), int(thumb["width"])
        raw = base64.b64decode(thumb["rgb"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise InputError("the trace's image thumbnail is malformed") from None
    if h < 1 or w < 1 or len(raw) != h * w * 3:
        raise InputError("the trace's image thumbnail is malformed")
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)
